# tokenfan API and worker image. Redis runs as its own service (see
# docker-compose.yml), so the embedded redis-server is not used here.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so source edits do not re-download them.
COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY shared ./shared
COPY tokenfan ./tokenfan
RUN pip install . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin tokenfan

USER tokenfan
# Run from the user's home, not /app: the installed package is what runs, and
# a .env (read from the working directory) can be mounted here.
WORKDIR /home/tokenfan

ENV TOKENFAN_HOST=0.0.0.0 \
    TOKENFAN_DATA_DIR=/home/tokenfan/.tokenfan
EXPOSE 8000

CMD ["python", "-m", "api"]
