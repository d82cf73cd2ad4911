"""Code both processes must agree on: settings, events, Redis keys, the append
script and the log reader."""
