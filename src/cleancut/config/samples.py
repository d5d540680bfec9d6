"""Commented sample configs printed by ``cleancut config generate`` (tests validate them)."""

APP_SAMPLE = """\
# cleancut application config: one consistency group, captured at one cut.
name = "shop"                 # lower-case letters, digits, "-" and "_"

# Hard bound on any host's write stall. A guest thaws by itself when it passes,
# and the recovery point is then marked not group-consistent.
freeze_timeout = "10s"        # "500ms", "10s", "2m"

# "abort":   no recovery point unless every member reaches application level
#            and the cut is group-consistent (GCP's behaviour).
# "degrade": keep going and record the weaker level (Azure's and AWS's default).
on_failure = "abort"

# The local index of recovery points (default: ~/.local/state/cleancut/<name>.catalog.sqlite).
# catalog = "/var/lib/cleancut/shop.catalog.sqlite"

[repository]
url = "/var/backups/shop"     # any restic repository URL: /path, sftp:..., rest:..., s3:...
password_file = "/etc/cleancut/shop.pass"
# password_command = ["/usr/bin/pass", "show", "backup/shop"]
# (or RESTIC_PASSWORD in the environment)

# One table per host. Relative paths are taken from this file's folder.
[hosts.app1]
connect = "local"
guest_config = "/etc/cleancut/guest.toml"

# The application's own checks, run by `cleancut verify` on a restored recovery point
# (argv, no shell, in this file's folder). Each gets CLEANCUT_DB_<NAME> (a connection URI
# of the sandbox's server, or a SQLite file) and CLEANCUT_VOLUME_<NAME> (a restored folder).
# [[checks]]
# name = "every order has its invoice"
# run = ["python3", "checks/orders_have_invoices.py"]
# timeout = "5m"

# When each action runs: systemd OnCalendar expressions (or hourly, daily, weekly,
# monthly). `cleancut schedule install` turns them into timers (or, --cron, a cron file).
# [schedule]
# backup = "*-*-* 02:00"
# forget = "daily"
# check = "weekly"                # restic check + every recovery point whole
# verify = "monthly"              # the restore drill, with the [[checks]] above
# randomized_delay = "10m"

# Which recovery points `cleancut forget` keeps, decided per RP (all its hosts together).
# [retention]
# keep_last = 3
# keep_daily = 7
# keep_weekly = 4
# keep_monthly = 12
# keep_within = "2d"              # every RP this close to the newest
# keep_only = "application"       # weaker RPs count for nothing and go first

# Who hears of each backup, forget, check and verify.
# [monitoring]
# prometheus_textfile = "/var/lib/prometheus/node-exporter/cleancut.prom"
# pushgateway = "http://127.0.0.1:9091"
# notify = ["ntfys://ntfy.example/backups"]      # Apprise URLs
# healthchecks = "https://hc.example/ping/UUID"  # /start, success, /fail pings
# on = ["failure", "degraded"]                   # which outcomes notify
"""

GUEST_SAMPLE = """\
# cleancut guest config: what exists on this host. Must be owned by root, mode 600 or 644,
# in folders nobody else can write to: hooks run as root.

# Where local snapshots wait for their upload (must not be on a frozen file system).
staging = "/var/lib/cleancut/staging"
# allow_root_freeze = false   # never freeze "/" unless you really mean it
# The longest freeze_timeout a coordinator may ask of this host (locks held, application
# quiesced, file systems frozen); larger requests are refused before anything is touched.
# max_freeze_timeout = "60s"  # at most "10m"

[volumes.orders]
path = "/srv/orders"          # the mount point (or directory) whose contents are captured
snapshot = "image"            # image | copy | btrfs | reflink
# the disk image backing this mount (found from its loop device when omitted):
# image = "/datastore/orders.img"
# fsfreeze its file system (default for image and copy; never with btrfs/reflink)
freeze = true

[databases.orders]
kind = "sqlite"
path = "/srv/orders/orders.db"
volume = "orders"

# [databases.shop]                    # PostgreSQL: pg_backup_start held through the snapshot
# kind = "postgresql"
# dsn = "host=/run/postgresql dbname=postgres user=postgres"
# volume = "orders"                   # holds the data directory; WAL and tablespaces must
#                                     # lie in volumes of this host too (hello checks)
# lock_timeout = "10s"

# [databases.invoices]                # MariaDB/MySQL: FLUSH TABLES WITH READ LOCK held
# kind = "mariadb"                    # or "mysql"
# socket = "/run/mysqld/mysqld.sock"  # or host = "127.0.0.1" and port = 3306
# user = "root"
# password_file = "/etc/cleancut/mariadb.pass"   # optional; mode 600
# volume = "orders"
# lock_timeout = "5s"                 # past it the lock is given up: never left read-only

# [[hooks]]
# name = "app-quiesce"
# pre = ["/etc/cleancut/hooks/pre.sh", "--flush"]   # argv list, absolute path, no shell
# post = ["/etc/cleancut/hooks/post.sh"]
# the volumes this hook quiesces (default: every volume of this host); only these
# count as held by it when the cut's consistency levels are judged
# volumes = ["orders"]
# timeout = "30s"
# retries = 0
# continue_on_failure = false
# sha256 = { pre = "<64 hex digits>", post = "<64 hex digits>" }

# Existing hook setups, used unchanged:
# [hooks_import]
# azure = "/etc/azure/VMSnapshotScriptPluginConfig.json"
# gcp = "/etc/google/snapshots"            # pre.sh / post.sh
# qemu_ga = "/etc/qemu/fsfreeze-hook.d"    # called with freeze / thaw
"""
