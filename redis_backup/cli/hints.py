"""What to check, in the user's words: the layers below name the settings an error is about
(`BackupError.settings`); here they become the environment variables, with their values."""

from __future__ import annotations

from redis_backup.cli.config import OPTIONS, Config
from redis_backup.errors import BackupError

_BY_ATTR = {o.attr: o for o in OPTIONS}


def describe(e: BaseException, cfg: Config | None) -> str:
    """str(e), then `(check REDIS_HOST=db1, REDIS_PORT=6380)` for the settings it names; a secret or an
    unset setting by its name alone."""
    text = str(e)
    names = getattr(e, "settings", ()) if isinstance(e, BackupError) else ()
    shown = []
    for attr in dict.fromkeys(names):
        o = _BY_ATTR.get(attr)
        if o is None:
            continue
        value = getattr(cfg, attr, None) if cfg is not None else None
        shown.append(o.env if o.secret or value is None else f"{o.env}={_value(value)}")
    return f"{text} (check {', '.join(shown)})" if shown else text


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
