"""``creditauth controls set | list | clear``: operator controls, through the admin gRPC service.

The CLI talks to a front end's ``creditauth.v1.Controls`` service, not to the store: the
front end authenticates the operator (a client certificate or a bearer token), checks the
admin right and writes the operator's authenticated name into the audit. A CLI that wrote
the store directly would need the replicas' store credentials on operators' machines and
would author changes under whatever name it was given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format

from creditauth.v1 import authorization_pb2 as pb
from creditauth.v1 import controls_pb2 as cpb
from creditauth.v1 import controls_pb2_grpc as cpb_grpc
from services.errors import ConfigError, CreditAuthError, InvalidRequest, error_for
from services.settings import Settings

if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

_TTL = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Server field paths -> the option that sets them, for refusals worded in the CLI's terms.
_OPTION = {
    "control.id": "--id", "control.effect": "--effect", "control.limit_factor": "--limit-factor",
    "control.apr_add_bps": "--apr-add-bps", "control.reason_code": "--reason-code",
    "control.justification": "--justification", "control.expires_at_unix": "--ttl/--expires-at",
    "control.expires_at": "--ttl/--expires-at", "control.scope.regions": "--region",
    "control.scope.industries": "--industry", "control.scope.products": "--product",
    "control.scope.channels": "--channel", "control.scope.tags": "--tag",
    "control.scope.merchants": "--merchant/--merchants-file", "control.scope": "--region/--industry/...",
}


def _ttl(s: str) -> float:
    m = _TTL.match(s.strip())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration (e.g. 90s, 30m, 2h, 7d): {s!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def _when(s: str) -> float:
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO time (YYYY-MM-DDTHH:MM[:SS]): {s!r}") from exc
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()


def _connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--target", help="front end host:port (default: serving.host:serving.port)")
    g.add_argument("--ca-file", type=Path, help="CA that signed the front end's certificate (PEM)")
    g.add_argument("--cert-file", type=Path, help="client certificate (PEM), for mutual TLS")
    g.add_argument("--key-file", type=Path, help="client key (PEM), for mutual TLS")
    g.add_argument("--token-file", type=Path, help="file holding a bearer token (JWT) naming the operator")
    g.add_argument("--server-name", help="name to check the front end's certificate against (default: the host)")
    g.add_argument("--plaintext", action="store_true", help="no TLS (a local front end started with --plaintext)")
    g.add_argument("--json", action="store_true", help="print the answer as JSON")


def add_controls(sub: _Subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    ct = sub.add_parser("controls", help="operator controls: live brakes on regions, industries, products, ...")
    ct_sub = ct.add_subparsers(dest="cmd", required=True)
    st = ct_sub.add_parser("set", help="add or replace a control (an admin caller's)")
    common(st)
    _connection(st)
    st.add_argument("--id", required=True, help="the control's id (replacing one with the same id)")
    st.add_argument("--effect", required=True, choices=["limit_factor", "apr_add", "refer", "decline", "pause"],
                    help="what the control does to the decisions it touches")
    st.add_argument("--limit-factor", type=float, default=0.0, help="limit_factor: approved limits x this, (0, 1]")
    st.add_argument("--apr-add-bps", type=int, default=0, help="apr_add: basis points added to the APR")
    st.add_argument("--reason-code", required=True, help="CTRL_...: carried by every decision the control touches")
    st.add_argument("--justification", required=True, help="why (kept in the audit and the reason text)")
    exp = st.add_mutually_exclusive_group(required=True)
    exp.add_argument("--ttl", type=_ttl, help="expires after this long (90s, 30m, 2h, 7d)")
    exp.add_argument("--expires-at", type=_when, help="expires at this time (ISO; UTC unless given)")
    for flag, what in (("region", "region name or code"), ("industry", "industry name or code"),
                       ("product", "product (WORKING_CAPITAL, ...)"), ("channel", "channel (POS_TERMINAL, ...)"),
                       ("tag", "tag name"), ("merchant", "merchant id")):
        # dest scope_*: ``--channel`` must not read as the serving channel (services/cli/main.settings_from).
        st.add_argument(f"--{flag}", dest=f"scope_{flag}", action="append", default=[],
                        help=f"scope: a {what} (repeat or comma-separate)")
    st.add_argument("--merchants-file", type=Path, help="scope: merchant ids, one per line (# comments)")
    st.set_defaults(run=controls_set)
    ls = ct_sub.add_parser("list", help="the controls in force")
    common(ls)
    _connection(ls)
    ls.add_argument("--all", action="store_true", help="expired controls too")
    ls.add_argument("--history", type=int, default=0, help="also the last N changes (who set what, when)")
    ls.set_defaults(run=controls_list)
    cl = ct_sub.add_parser("clear", help="remove a control before it expires")
    common(cl)
    _connection(cl)
    cl.add_argument("id", help="the control's id")
    cl.add_argument("--justification", required=True, help="why (kept in the audit)")
    cl.set_defaults(run=controls_clear)


def _values(items: list[str]) -> list[str]:
    return [v.strip() for item in items for v in item.split(",") if v.strip()]


def _enum(items: list[str], enum: Any, prefix: str, flag: str) -> list[int]:
    out = []
    for v in _values(items):
        name = prefix + v.upper().removeprefix(prefix)
        if name not in enum.keys():  # noqa: SIM118 (a protobuf enum wrapper, not a dict)
            known = ", ".join(k.removeprefix(prefix) for k in enum.keys()[1:])
            raise InvalidRequest(flag, f"{v!r} is not one of {known}")
        out.append(enum.Value(name))
    return out


def merchants_from(path: Path) -> list[str]:
    """Merchant ids, one per line; a bad line is refused naming the file and line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"--merchants-file {path}: {exc.strerror}") from None
    out = []
    for n, line in enumerate(lines, start=1):
        v = line.split("#", 1)[0].strip()
        if not v:
            continue
        if not re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", v):
            raise InvalidRequest(f"{path}:{n}", f"merchant id: 1-64 characters of A-Z a-z 0-9 . _ : -, got {v[:64]!r}")
        out.append(v)
    return out


def set_request(args: argparse.Namespace) -> cpb.SetControlRequest:
    merchants = _values(args.scope_merchant) + (merchants_from(args.merchants_file) if args.merchants_file else [])
    scope = cpb.ControlScope(
        regions=_values(args.scope_region), industries=_values(args.scope_industry),
        products=_enum(args.scope_product, pb.Product, "PRODUCT_", "--product"),
        channels=_enum(args.scope_channel, pb.Channel, "CHANNEL_", "--channel"),
        tags=_values(args.scope_tag), merchant_ids=merchants,
    )
    control = cpb.Control(
        id=args.id, scope=scope, effect=cpb.ControlEffect.Value(f"CONTROL_EFFECT_{args.effect.upper()}"),
        limit_factor=args.limit_factor, apr_add_bps=args.apr_add_bps, reason_code=args.reason_code,
        justification=args.justification, expires_at_unix=args.expires_at or 0.0,
    )
    return cpb.SetControlRequest(control=control, ttl_seconds=args.ttl or 0.0)


def _read(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc.strerror}") from None


def channel(settings: Settings, args: argparse.Namespace) -> grpc.Channel:
    target = args.target or f"{settings.serving.host}:{settings.serving.port}"
    if args.plaintext:
        return grpc.insecure_channel(target)
    if (args.cert_file is None) != (args.key_file is None):
        raise ConfigError("--cert-file and --key-file go together (mutual TLS)")
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(args.ca_file, "--ca-file"), private_key=_read(args.key_file, "--key-file"),
        certificate_chain=_read(args.cert_file, "--cert-file"),
    )
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(target, creds, options=options)


def _metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    token = _read(args.token_file, "--token-file")
    return [("authorization", f"Bearer {token.decode().strip()}")] if token else []


def _call(settings: Settings, args: argparse.Namespace, method: str, request: Any) -> Any:
    with channel(settings, args) as ch:
        stub = cpb_grpc.ControlsStub(ch)
        try:
            return getattr(stub, method)(request, metadata=_metadata(args), timeout=30)
        except grpc.RpcError as exc:
            raise _refusal(exc) from None


def _refusal(exc: grpc.RpcError) -> CreditAuthError:
    """The front end's refusal as the services' error; a bad field also names its option."""
    code, details = exc.code(), exc.details() or ""
    field = details.split(":", 1)[0]
    base = re.sub(r"\[\d+\]$", "", field)
    if code == grpc.StatusCode.INVALID_ARGUMENT and ": " in details:
        hint = f" (option {_OPTION[base]})" if base in _OPTION else ""
        return InvalidRequest(field, details.split(": ", 1)[1] + hint)
    return error_for(int(code.value[0]), f"{code.name}: {details}")


def _show(message: Any, args: argparse.Namespace, text: Callable[[], str]) -> None:
    if args.json:
        print(json_format.MessageToJson(message, preserving_proto_field_name=True))
    else:
        print(text())


def describe(c: cpb.Control) -> str:
    scope = json_format.MessageToDict(c.scope, preserving_proto_field_name=True)
    effect = cpb.ControlEffect.Name(c.effect).removeprefix("CONTROL_EFFECT_").lower()
    value = {"limit_factor": f" x{c.limit_factor:g}", "apr_add": f" +{c.apr_add_bps} bps"}.get(effect, "")
    until = dt.datetime.fromtimestamp(c.expires_at_unix, dt.timezone.utc).isoformat(timespec="seconds")
    state = " EXPIRED" if c.expired else ""
    return (f"{c.id} v{c.version}{state}: {effect}{value} on {json.dumps(scope)} [{c.reason_code}] "
            f"by {c.author} until {until}: {c.justification}")


def controls_set(settings: Settings, args: argparse.Namespace) -> None:
    resp = _call(settings, args, "Set", set_request(args))
    _show(resp, args, lambda: f"set (version {resp.version}): {describe(resp.control)}")


def controls_list(settings: Settings, args: argparse.Namespace) -> None:
    req = cpb.ListControlsRequest(include_expired=args.all, history=args.history)
    resp = _call(settings, args, "List", req)

    def text() -> str:
        lines = [f"version {resp.version}: {len(resp.controls)} control(s)"]
        lines += [f"  {describe(c)}" for c in resp.controls]
        for h in resp.history:
            at = dt.datetime.fromtimestamp(h.at_unix, dt.timezone.utc).isoformat(timespec="seconds")
            lines.append(f"  [{h.version}] {at} {h.action} {h.control.id} by {h.author}: {h.justification}")
        return "\n".join(lines)

    _show(resp, args, text)


def controls_clear(settings: Settings, args: argparse.Namespace) -> None:
    resp = _call(settings, args, "Clear", cpb.ClearControlRequest(id=args.id, justification=args.justification))
    _show(resp, args, lambda: f"cleared (version {resp.version}): {describe(resp.cleared)}")
