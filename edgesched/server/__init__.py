"""The inference daemon: HTTP transport (app), admission, the dispatcher thread, the model
runner, configuration, metrics and the systemd protocol. Nothing here runs at import time."""
