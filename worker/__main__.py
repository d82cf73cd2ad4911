"""``python -m worker``: one worker process."""

import logging

from worker.settings import create_worker


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    create_worker().run()


if __name__ == "__main__":
    main()
