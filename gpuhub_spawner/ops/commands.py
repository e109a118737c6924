"""``gpuhub backup``, ``gpuhub restore``, ``gpuhub upgrade``: argparse wiring and what they print.

Exit codes: 0 done; 1 an upgrade failed after its backup (the roll-back command is printed);
2 refused or failed before anything was changed.  Nothing printed ever holds a secret value:
only paths, counts and revisions.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from gpuhub_spawner.ops.manifest import OpsError, summary

SECRETS_NOTE = ("The archive holds secrets ({}): keep it where only operators can read it "
                "(it is mode 0600), and never attach it to a ticket.")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the hub's gpuhub.yaml (default: GPUHUB_CONFIG, else the embedded default)")
    parser.add_argument("--data-dir", help="the hub's data directory when gpuhub.yaml leaves hub.data_dir empty "
                                           "(default: ./data, beside jupyterhub_config.py)")
    parser.add_argument("--secrets-dir", help="the deployment's secrets directory (default: /etc/gpuhub/secrets)")
    parser.add_argument("--stack", metavar="NAME", help="a deployed stack (e.g. gpuhub): run inside its hub service")


def add_ops_commands(sub: Any) -> None:
    backup = sub.add_parser("backup", help="one archive of the hub's databases, secrets and config")
    _common(backup)
    backup.add_argument("--out", help="the archive to write (default: <data_dir>/backups/gpuhub-backup-<time>.tar.gz)")
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser("restore", help="restore a gpuhub backup (the hub must be stopped)")
    restore.add_argument("file", help="the archive made by gpuhub backup")
    _common(restore)
    restore.add_argument("--yes", action="store_true", help="replace state that is already there")
    restore.add_argument("--stop-hub", action="store_true",
                         help="with --stack: scale the hub service to 0 for the restore, and back afterwards")
    restore.add_argument("--image", help="with --stack: the hub image whose gpuhub restores (default: the hub service's)")
    restore.set_defaults(func=cmd_restore)
    upgrade = sub.add_parser("upgrade", help="back up (restore-tested), then migrate the databases")
    _common(upgrade)
    upgrade.add_argument("--out", help="where the backup taken first goes")
    upgrade.add_argument("--image", help="with --stack: the hub image to run after the upgrade")
    upgrade.set_defaults(func=cmd_upgrade)


def _locate(args: argparse.Namespace) -> Any:
    from gpuhub_spawner.ops.local import locate

    return locate(args.config, args.data_dir, args.secrets_dir)


def _stack_secrets_dir(args: argparse.Namespace) -> Path:
    """The deploy secrets dir: --secrets-dir, else gpuhub.yaml's deploy.secrets_dir, else the default."""
    from gpuhub_spawner.ops.local import DEFAULT_SECRETS_DIR

    if args.secrets_dir:
        return Path(args.secrets_dir)
    if args.config:
        from gpuhub_spawner.core.config import check_file

        deploy = check_file(args.config).deploy
        if deploy is not None:
            return Path(deploy.secrets_dir)
    return Path(DEFAULT_SECRETS_DIR)


def _refused(command: str, error: Exception) -> int:
    from gpuhub_spawner.core.config import ConfigFileError

    lines = error.lines if isinstance(error, ConfigFileError) else [str(error)]
    for line in lines:
        print(f"gpuhub {command}: {line}", file=sys.stderr)
    return 2


def _config_errors() -> tuple[type[Exception], ...]:
    from gpuhub_spawner.core.config import ConfigFileError
    from gpuhub_spawner.core.hubconfig import ConfigError

    return (OpsError, ConfigFileError, ConfigError)


def print_backup(path: Path, manifest: dict[str, Any]) -> None:
    for db in manifest["databases"]:
        print(f"  {db['role']} database ({db['kind']}): {summary(db['tables'])}")
    secret = [m for m in manifest["files"] if not m.startswith("db/")]
    if secret:
        print("  " + SECRETS_NOTE.format(", ".join(secret)))
    print(path)


def cmd_backup(args: argparse.Namespace) -> int:
    try:
        if args.stack:
            from gpuhub_spawner.ops import stack

            with stack.docker_errors("gpuhub backup --stack"):
                path, manifest = stack.backup(args.stack, Path(args.out) if args.out else None)
        else:
            from gpuhub_spawner.ops.local import backup

            path, manifest = backup(_locate(args), Path(args.out) if args.out else None)
    except _config_errors() as e:
        return _refused("backup", e)
    print(f"gpuhub backup: wrote {path} (mode 0600, gpuhub {manifest['versions'].get('gpuhub')}, "
          f"JupyterHub {manifest['versions'].get('jupyterhub')})")
    print_backup(path, manifest)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    try:
        if args.stack:
            from gpuhub_spawner.ops import stack

            with stack.docker_errors("gpuhub restore --stack"):
                lines = stack.restore(args.stack, Path(args.file), args.yes, args.stop_hub, _stack_secrets_dir(args),
                                      args.image)
        else:
            from gpuhub_spawner.ops.local import restore

            lines = restore(_locate(args), Path(args.file), args.yes)
    except _config_errors() as e:
        return _refused("restore", e)
    for line in lines:
        print(f"gpuhub restore: {line}")
    print("gpuhub restore: done" + ("" if args.stack else "; start the hub"))
    return 0


def rollback_command(args: argparse.Namespace, backup: Path) -> str:
    words = ["gpuhub", "restore", str(backup)]
    for option in ("config", "data_dir", "secrets_dir", "stack", "image"):
        if getattr(args, option, None):
            words += ["--" + option.replace("_", "-"), str(getattr(args, option))]
    return shlex.join([*words, "--yes"])


def cmd_upgrade(args: argparse.Namespace) -> int:
    from gpuhub_spawner.ops.upgrade import UpgradeFailed

    try:
        if args.stack:
            from gpuhub_spawner.ops import stack

            with stack.docker_errors("gpuhub upgrade --stack"):
                report = stack.upgrade(args.stack, args.image, Path(args.out) if args.out else None)
        else:
            from gpuhub_spawner.ops.upgrade import upgrade

            report = upgrade(_locate(args), Path(args.out) if args.out else None)
    except UpgradeFailed as e:
        print(f"gpuhub upgrade: FAILED: {e}", file=sys.stderr)
        print(f"gpuhub upgrade: the databases may be half upgraded; the backup taken first is {e.backup}", file=sys.stderr)
        if args.stack:
            print(f"gpuhub upgrade: the hub service {args.stack}_hub is at 0 replicas on its old image; roll back, "
                  f"then start it (docker service scale {args.stack}_hub=1):", file=sys.stderr)
        else:
            print("gpuhub upgrade: roll back with the previous gpuhub installed, the hub stopped:", file=sys.stderr)
        print(f"  {rollback_command(args, e.backup)}", file=sys.stderr)
        return 1
    except _config_errors() as e:
        return _refused("upgrade", e)
    for line in report.lines:
        print(f"gpuhub upgrade: {line}")
    print(f"gpuhub upgrade: done; the backup taken first is {report.backup}")
    return 0
