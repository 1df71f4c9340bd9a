# MessageHub configuration. Copy to instance/config.py and change what you need.
#
# Order of precedence: the defaults shown here, then instance/config.py, then
# environment variables named MESSAGEHUB_<KEY> (values are read as JSON when
# they parse, e.g. MESSAGEHUB_BATCH_SIZE=500, else as text). The instance
# folder itself is chosen with MESSAGEHUB_INSTANCE_PATH (default: ./instance).

# Database URL (SQLAlchemy form). Default: SQLite file instance/messagehub.db.
# For several hosts sharing campaigns, use PostgreSQL, e.g.
# "postgresql+psycopg://messagehub:PASSWORD@db.internal/messagehub".
# SQLALCHEMY_DATABASE_URI = "sqlite:////srv/messagehub/instance/messagehub.db"

# Secret key for sessions and for encrypting stored passwords. Default: a
# random key generated into instance/secret_key on first start. Changing it
# logs everyone out and makes stored SMTP passwords unreadable.
# SECRET_KEY = "..."

# Folder for the "Outbox" delivery method: one .eml file per message.
# Default: instance/outbox.
# OUTBOX_DIR = "/srv/messagehub/outbox"

# Folder of the handover journals: the file each SMTP campaign process
# writes before and after each message, read after a crash to tell sent from
# unsent (messagehub/engine/README.md). Keep it on the machine that runs the
# campaign processes. It needs no backup, because it matters only while a
# campaign runs. Default: instance/handover.
# HANDOVER_DIR = "/var/lib/messagehub/handover"

# Recipients read from the database per batch by a campaign run, at least.
# An SMTP run that sends fast grows its batches toward a quarter of a second
# of sending, up to 1,000 (or this value, if larger). Default: 100.
# BATCH_SIZE = 100

# Attempts per recipient before a temporary failure (SMTP 4xx, dropped
# connection) becomes permanent. Default: 5.
# MAX_ATTEMPTS = 5

# Delay before the first retry of a temporary failure, in seconds; it doubles
# with each attempt up to RETRY_MAX_SECONDS. Defaults: 60 and 3600.
# RETRY_BASE_SECONDS = 60.0
# RETRY_MAX_SECONDS = 3600.0

# Default timeout of every SMTP network operation, in seconds, when the SMTP
# settings give none. Default: 30.
# SMTP_TIMEOUT = 30.0

# SMTP connections a background campaign sends over. They are spread over
# at most one worker process per CPU, because Python runs one thread at a
# time per process. Each process drives its share in rounds: a message on
# each connection, then their replies, so it seldom sits waiting for the relay.
# Into Postfix's smtp-sink on a 2-CPU machine, a 50,000-recipient campaign
# sent about 6,900 messages/s over two, 8,300 over four, 9,200 over six and
# 9,200 over eight (medians of three runs, first message to last). A relay
# may limit connections per client.
# Foreground campaigns, in the web app, always use one. From 1 to 16 (other
# values are moved into that range, with a warning in the log). Default: 6.
# SMTP_CONNECTIONS = 6

# Timeout of each request to an API provider (SendGrid, SES, Twilio, SNS), in
# seconds. A request that times out after it was sent is recorded as sent
# unconfirmed, never sent again. Default: 30.
# PROVIDER_TIMEOUT = 30.0

# A campaign pauses itself, saying why, when more than this share of the last
# ERROR_RATE_WINDOW recipients failed for good: a wrong sender or a spoiled
# list should not burn through the whole audience. 1.0 never pauses.
# Defaults: 0.25 and 200.
# ERROR_RATE_LIMIT = 0.25
# ERROR_RATE_WINDOW = 200

# Domain in generated Message-ID headers. Default: the domain of each
# campaign's sender address.
# MESSAGE_ID_DOMAIN = "mail.example.com"

# Largest CSV upload accepted, in bytes. Default: 512 MiB.
# IMPORT_MAX_BYTES = 536870912

# Log level of campaign processes: DEBUG, INFO, WARNING or ERROR. Default: INFO.
# LOG_LEVEL = "INFO"

# Supervisor of background campaigns: "systemd" (each campaign is the unit
# messagehub-campaign@<id>.service), "process" (detached processes with a log
# file each under instance/logs, for machines without systemd), or "auto":
# systemd when a manager replies on the bus, else processes. Default: "auto".
# SUPERVISOR = "auto"

# Talk to the calling user's systemd manager instead of the system one.
# Default: False.
# SYSTEMD_USER_MODE = False

# Install locations: where `make install` put MessageHub, its virtualenv (empty means
# INSTALL_PREFIX/venv), the campaign units' instance folder and their user.
# Used for units started as transient units (the web app running as root or
# against a user manager). Defaults: /opt/messagehub, "", /var/lib/messagehub,
# messagehub.
# INSTALL_PREFIX = "/opt/messagehub"
# INSTALL_VENV = ""
# STATE_DIR = "/var/lib/messagehub"
# RUN_USER = "messagehub"

# Seconds the plain-process supervisor waits for a campaign to stop after
# SIGTERM. Default: 10.
# PROCESS_STOP_TIMEOUT = 10.0
