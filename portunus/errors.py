"""
One registry of stable error codes.

Every refusal the product makes carries a code from this registry, with the
HTTP status the API answers, the exit code the CLI returns and a message
that tells the operator what to do.  Codes and numbers follow Portunus
(reference inventory §1.5, §5.3) so its documentation stays true here.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from portunus.bounds import AUDIT_PAGE_LIMIT, ENROLLMENT_TTL_SECS, HEALTH_CHECK_INTERVAL_SECS, PORT

__all__ = [
    "ERRORS",
    "ErrorCode",
    "PortunusError",
    "lookup",
]


@attrs.frozen
class ErrorCode:
    """A stable error code and how each surface reports it."""

    code: str
    http_status: int
    exit_code: int
    hint: str


def _registry(*codes: ErrorCode) -> Mapping[str, ErrorCode]:
    return {c.code: c for c in codes}


ERRORS: Mapping[str, ErrorCode] = _registry(
    # Configuration and validation.
    ErrorCode("config_invalid", 400, 2, "fix the listed fields and run --check again"),
    ErrorCode("validation_failed", 400, 3, "fix the named field and retry"),
    # Binding listeners.
    ErrorCode(
        "port_in_use",
        409,
        5,
        "another process (or rule) holds this port; stop it or pick a free port",
    ),
    ErrorCode(
        "permission_denied",
        422,
        6,
        "ports below 1024 need root or CAP_NET_BIND_SERVICE; use a higher port or grant it",
    ),
    ErrorCode("bind_failed", 422, 6, "the address could not be bound; check it exists here"),
    ErrorCode(
        "protocol_unsupported",
        422,
        3,
        'this build cannot forward that protocol yet; use protocol = "tcp"',
    ),
    # Kernel mode (portunus/dataplane/kernel): the refusal carries a `reason`.
    ErrorCode(
        "kernel_mode_unsupported",
        422,
        3,
        'the rule needs the relay (see the reason); use mode = "relay" or "auto"',
    ),
    ErrorCode(
        "kernel_mode_unavailable",
        422,
        6,
        "kernel mode cannot run here (see the reason); fix it, or use the relay",
    ),
    # TLS SNI routing (codes as Portunus spells them).
    ErrorCode(
        "validation.sni_pattern_malformed",
        400,
        3,
        "use an exact host name or a single-label wildcard such as *.example.com",
    ),
    ErrorCode(
        "validation.sni_on_unsupported_rule",
        400,
        3,
        "SNI routing needs a single-port TCP rule",
    ),
    ErrorCode(
        "conflict.sni_route_duplicate",
        409,
        5,
        "another rule on this port already routes that pattern; remove one",
    ),
    ErrorCode(
        "conflict.sni_fallback_duplicate",
        409,
        5,
        "a port has at most one SNI fallback rule; remove one",
    ),
    ErrorCode(
        "conflict.legacy_to_sni_unsupported",
        409,
        5,
        "a port is either SNI-routed or plain; move the plain rule to another port",
    ),
    ErrorCode(
        "conflict.sni_proxy_protocol_mismatch",
        409,
        5,
        "rules sharing an SNI port all set accept_proxy_protocol, or none does",
    ),
    # Tenants on an edge (docs/security.md#tenants-on-an-edge).
    ErrorCode(
        "validation.target_is_listener",
        400,
        3,
        "a rule cannot forward to its own listen port on the same host; pick another target",
    ),
    ErrorCode(
        "local_target_not_granted",
        403,
        5,
        "targets on loopback, link-local or the edge's own addresses need a grant that "
        "allows local targets; ask a superadmin",
    ),
    ErrorCode(
        "local_target_policy_unsupported_by_client",
        422,
        3,
        "this client cannot refuse local addresses a host name resolves to; upgrade it, "
        "or use an IP address",
    ),
    # Standalone stats socket requests (portunus/standalone/statsock.py).
    ErrorCode(
        "stats_request_invalid",
        400,
        2,
        'send one JSON object per line: {"cmd": "reload"} or {"cmd": "log-level", "spec": LEVEL}',
    ),
    ErrorCode(
        "stats_client_failed",
        503,
        2,
        "check that portunus-standalone runs and that --socket names its [stats] socket_path",
    ),
    ErrorCode(
        "reload_unsupported",
        501,
        1,
        "restart the service to apply a changed config (run --check on it first)",
    ),
    ErrorCode(
        "log_level_invalid",
        400,
        2,
        "give one level for the whole process: debug, info, warn, error or critical",
    ),
    ErrorCode(
        "log_level_unavailable",
        409,
        1,
        "this process was not started with its own log observer; restart it with --log-level",
    ),
    # Rule lifecycle.
    ErrorCode("rule_not_found", 404, 8, "list the rules to find the right name or id"),
    ErrorCode("rule_exists", 409, 5, "rule names are unique; remove the old rule or rename"),
    # twistd --logfile (portunus/tapsupport.py); printed before the log starts.
    ErrorCode("log_file_unwritable", 500, 1, "choose a --logfile path the service user can write"),
    # Server startup: the data dir (portunus/server/datadir.py).  Exit 1 as
    # in Portunus; never answered over HTTP, so the status is nominal.
    ErrorCode(
        "startup.unsupported_filesystem",
        500,
        1,
        "move --data-dir to a local disk filesystem, or set "
        "PORTUNUS_ALLOW_UNSUPPORTED_FILESYSTEM=1 at your own risk",
    ),
    ErrorCode(
        "startup.data_dir_invalid",
        500,
        1,
        "point --data-dir at a directory the server user can create and write",
    ),
    # --- Operator API and CLI (portunus/server/api, portunus/cli, portunus/rulespec.py).
    # Statuses and exit codes as Portunus (inventory §1.5, §5.3).
    ErrorCode(
        "invalid_json", 400, 3, "send a JSON object body with Content-Type: application/json"
    ),
    ErrorCode("body_too_large", 413, 3, "send a smaller body; the message names the limit"),
    ErrorCode("invalid_name", 400, 3, "use 1 to 64 printable characters"),
    ErrorCode("invalid_protocol", 400, 3, 'use "tcp" or "udp"'),
    ErrorCode("invalid_target", 400, 3, "write the target as host:port with a valid host"),
    ErrorCode("invalid_client_address", 400, 3, "give a bare host name or IP, without a port"),
    ErrorCode(
        "invalid_enrollment_ttl", 400, 3, f"use a ttl from {ENROLLMENT_TTL_SECS.span()} seconds"
    ),
    ErrorCode("range_invalid", 400, 3, f"ports are {PORT.span('..')}, written N or A-B"),
    ErrorCode("range_inverted", 400, 3, "write the lower port first"),
    ErrorCode("mismatched_range", 400, 3, "the listen and target ranges must be the same size"),
    ErrorCode("rule_shape_missing", 400, 3, "give one target: TARGET, --target or --targets-json"),
    ErrorCode("rule_shape_conflict", 400, 3, "use only one of TARGET, --target and --targets-json"),
    ErrorCode("targets_empty", 400, 3, "list at least one target"),
    ErrorCode("targets_too_many", 400, 3, "a rule has at most 8 targets"),
    ErrorCode(
        "health_check_interval_out_of_range",
        400,
        3,
        f"use an interval from {HEALTH_CHECK_INTERVAL_SECS.span()} seconds",
    ),
    ErrorCode("validation.rate_limit_cap_zero", 400, 3, "a cap is at least 1; omit it for none"),
    ErrorCode(
        "validation.rate_limit_burst_without_rate", 400, 3, "set the rate the burst belongs to"
    ),
    ErrorCode("validation.rate_limit_burst_range", 400, 3, "keep the burst near the rate"),
    ErrorCode("validation.rate_limit_no_caps_provided", 400, 3, "set at least one cap"),
    ErrorCode(
        "unauthenticated",
        401,
        4,
        "send Authorization: Bearer <token>: operator_token in server.toml, else the "
        "data dir's operator.token file",
    ),
    ErrorCode("not_found", 404, 8, "see docs/api.md for the routes"),
    ErrorCode("method_not_allowed", 405, 1, "see docs/api.md for the methods of this route"),
    ErrorCode("client_not_found", 404, 8, "run list-clients to find the right id or name"),
    ErrorCode(
        "client_name_ambiguous", 409, 3, "several clients have that name; give the client id"
    ),
    ErrorCode("client_already_exists", 409, 2, "pick another name or re-enroll the client"),
    ErrorCode("client_not_revoked", 409, 5, "revoke the client before deleting it"),
    ErrorCode(
        "client_not_connected",
        422,
        4,
        "start portunus-client on the edge (or check its logs) and retry",
    ),
    ErrorCode("unsupported_protocol", 422, 3, "this client cannot forward that protocol"),
    ErrorCode("activation_failed", 422, 6, "the client could not start the rule; see the reason"),
    ErrorCode(
        "ack_timeout",
        504,
        7,
        "the client did not confirm in time; the rule stays pending, check list-rules",
    ),
    ErrorCode("internal", 500, 1, "see the server log for the correlation id"),
    # --- end of operator API and CLI codes.
    # --- Store (portunus/server/store): opening state.db, enrollment,
    # offline backup/restore/reset.  Exit codes as the design and Portunus
    # (inventory §1.5); startup codes are never answered over HTTP.
    ErrorCode(
        "startup.store_in_use",
        503,
        75,
        "another server (or offline command) holds the data dir; stop it or use another --data-dir",
    ),
    ErrorCode(
        "startup.schema_version_too_new",
        500,
        78,
        "the database was written by a newer server: upgrade the server or restore a backup",
    ),
    ErrorCode(
        "startup.store_open_failed",
        500,
        1,
        "check the disk and state.db's permissions, or restore a backup if the file is damaged",
    ),
    ErrorCode("client_revoked", 409, 5, "a revoked client stays revoked; enroll a new client"),
    ErrorCode("enrollment_invalid", 401, 1, "ask the operator for a new enrollment command"),
    ErrorCode("enrollment_used", 401, 1, "a code works once; ask the operator to re-enroll"),
    ErrorCode("enrollment_expired", 401, 1, "ask the operator for a new code (or a longer ttl)"),
    ErrorCode(
        "enrollment_rate_limited",
        429,
        1,
        "too many wrong codes came from this address: wait a minute, then retry the right one",
    ),
    ErrorCode("backup_source_missing", 404, 5, "point --data-dir at the server's data dir"),
    ErrorCode("backup_destination_exists", 409, 6, "choose another --out or remove the file"),
    ErrorCode("backup_failed", 500, 1, "check the disk and permissions of both paths"),
    ErrorCode("restore_source_missing", 404, 5, "give --in the path of a backup file"),
    ErrorCode("restore_not_sqlite", 400, 7, "give --in a file written by 'backup'"),
    ErrorCode("restore_not_portunus", 400, 7, "give --in a file written by 'backup'"),
    ErrorCode(
        "restore_destination_exists",
        409,
        6,
        "pass --force to replace the current state (back it up first)",
    ),
    ErrorCode(
        "restore_migration_failed", 500, 70, "the current state is untouched; report the error"
    ),
    ErrorCode("reset_not_sqlite", 400, 7, "state.db is not an SQLite file; check --data-dir"),
    # --- end of store codes.
    # --- Control TLS and enrollment (portunus/control/tls.py, enrollment.py).
    # Startup codes exit 78 (EX_CONFIG); client-side codes exit 1 as
    # portunus-client does for any bundle or enroll failure (inventory §1.6).
    ErrorCode(
        "startup.tls_key_permissions",
        500,
        78,
        "the TLS key must be readable by its owner only: chmod 600 it and start again",
    ),
    ErrorCode(
        "startup.server_toml_permissions",
        500,
        78,
        "server.toml sets operator_token, so it must be readable by its owner only: "
        "chmod 600 it and start again",
    ),
    ErrorCode(
        "startup.tls_material_invalid",
        500,
        78,
        "put a matching PEM certificate and unencrypted key in place, or remove both to regenerate",
    ),
    ErrorCode(
        "client.enroll_uri_invalid",
        400,
        1,
        "paste the whole portunus://HOST:PORT/enroll?pin=sha256:...&code=... the server printed",
    ),
    ErrorCode(
        "client.bundle_invalid",
        400,
        1,
        "fix the named field, or enroll again to write a fresh bundle",
    ),
    # --- end of control TLS and enrollment codes.
    # Control plane: rule push gates and edge enrollment.
    ErrorCode("exceeds_cap", 400, 3, "split the range into rules within range_rule_max_ports"),
    ErrorCode(
        "multi_target_unsupported_by_client",
        422,
        3,
        "upgrade the edge, or push one target",
    ),
    ErrorCode("sni_unsupported_by_client", 422, 3, "upgrade the edge, or drop the SNI pattern"),
    ErrorCode(
        "proxy_protocol_unsupported_by_client",
        422,
        3,
        "upgrade the edge, or drop proxy_protocol from the targets",
    ),
    ErrorCode(
        "rate_limit_unsupported_by_client", 422, 3, "upgrade the edge, or drop the rate limit"
    ),
    ErrorCode(
        "client.enrollment_failed",
        400,
        1,
        "check the URI, that the server runs and its control port is reachable",
    ),
    # --- Accounts, sessions, RBAC, audit (codes and statuses as Portunus §5.3).
    ErrorCode(
        "bootstrap_required",
        503,
        6,
        "no superadmin exists yet: open the console and onboard with the setup token "
        "portunus-server onboarding-token prints",
    ),
    ErrorCode(
        "credential_invalid",
        401,
        4,
        "the session or bearer token is unknown or expired; log in again or check the token",
    ),
    ErrorCode("user_disabled", 401, 4, "this user is disabled; ask a superadmin"),
    ErrorCode("invalid_login", 401, 4, "check the user id and password"),
    ErrorCode(
        "setup_token_required",
        401,
        4,
        "send the onboarding setup token portunus-server onboarding-token prints",
    ),
    ErrorCode(
        "setup_token_invalid",
        401,
        4,
        "the setup token is wrong or expired (a new one replaces it every 30 minutes); "
        "run portunus-server onboarding-token for the current one",
    ),
    ErrorCode("role_required", 403, 5, "this needs a superadmin"),
    ErrorCode("not_owner", 403, 5, "only the rule's owner or a superadmin may do this"),
    ErrorCode("client_not_granted", 403, 5, "ask a superadmin for a grant on this client"),
    ErrorCode(
        "port_outside_grant",
        403,
        5,
        "push within one of your grants' port ranges, or ask a superadmin to widen one",
    ),
    ErrorCode(
        "protocol_not_granted",
        403,
        5,
        "your grant on this client does not cover that protocol; ask a superadmin",
    ),
    ErrorCode(
        "password_change_required",
        403,
        4,
        "change your password first (POST /v1/users/me/password, or the console's prompt)",
    ),
    ErrorCode(
        "csrf_origin_required", 403, 4, "send an Origin header with cookie-authenticated writes"
    ),
    ErrorCode(
        "csrf_origin_mismatch",
        403,
        4,
        "the Origin must be this server's own origin (or operator_http_public_origin)",
    ),
    ErrorCode(
        "csrf_header_required", 403, 4, "send X-Portunus-CSRF: 1 with cookie-authenticated writes"
    ),
    ErrorCode(
        "csrf_content_type_required",
        403,
        4,
        "send the body as Content-Type: application/json",
    ),
    ErrorCode("user_not_found", 404, 8, "user-list shows the users that exist"),
    ErrorCode("grant_not_found", 404, 8, "grant-list shows the grants that exist"),
    ErrorCode(
        "already_bootstrapped",
        409,
        2,
        "a superadmin exists already; log in, or have a superadmin create your user",
    ),
    # portunus-server onboarding-token while the server runs (never over HTTP).
    ErrorCode(
        "setup_token_unavailable",
        409,
        1,
        "onboarding is closed, or the server could not write onboarding.token: see its log",
    ),
    ErrorCode("user_already_exists", 409, 2, "pick another user id, or remove the old user first"),
    ErrorCode("cannot_remove_self", 409, 2, "have another superadmin remove this user"),
    ErrorCode(
        "last_superadmin",
        409,
        2,
        "create (or promote) another superadmin first; the last one cannot be removed",
    ),
    ErrorCode(
        "invalid_user_id",
        422,
        3,
        "use 1 to 32 of a-z, 0-9, _ and -, starting with a letter",
    ),
    ErrorCode("invalid_display_name", 422, 3, "use 1 to 64 characters without control characters"),
    ErrorCode("reserved_user_id", 422, 3, "ids starting with _ are reserved; pick another"),
    ErrorCode("invalid_role", 422, 3, 'use "superadmin" or "user"'),
    ErrorCode("invalid_port_range", 422, 3, f"use ports {PORT.span('..')} with start <= end"),
    ErrorCode("empty_protocol_set", 422, 3, 'list at least one of "tcp", "udp"'),
    ErrorCode("invalid_client", 422, 3, 'name an existing client, its id, or "*" for all'),
    ErrorCode("initial_password_required", 422, 3, "give the new user an initial password"),
    ErrorCode("password_too_short", 422, 3, "use at least 12 characters"),
    ErrorCode("password_too_long", 422, 3, "use at most 1024 bytes"),
    ErrorCode(
        "password_invalid", 422, 3, "the current password is wrong, or the value is not text"
    ),
    ErrorCode("password_mismatch", 422, 3, "type the same new password twice"),
    ErrorCode("invalid_limit", 422, 3, f"use a limit from {AUDIT_PAGE_LIMIT.span()}"),
    ErrorCode("invalid_outcome", 422, 3, 'use outcome "allow" or "deny"'),
    ErrorCode("invalid_cursor", 400, 3, "pass back a next_cursor exactly as the server sent it"),
    ErrorCode(
        "invalid_time_range",
        400,
        3,
        "use RFC 3339 timestamps such as 2026-01-02T03:04:05Z, since before until",
    ),
    ErrorCode(
        "endpoint_invalid",
        422,
        3,
        "use host:port with a DNS name or IP the edges can reach, or null to clear",
    ),
    ErrorCode(
        "endpoint_not_in_cert_san",
        422,
        3,
        "the server certificate does not name that host; pick a host it covers, or "
        "regenerate the certificate with that host",
    ),
    ErrorCode("rate_limited", 429, 1, "too many failures; wait for the Retry-After seconds"),
    ErrorCode(
        "password_hash_failed", 500, 1, "the server could not hash the password; see its log"
    ),
    ErrorCode("store_error", 500, 1, "the server's store failed; see its log"),
)


def lookup(code: str) -> ErrorCode:
    """Return the registered code; unknown codes are a programming error."""
    return ERRORS[code]


class PortunusError(Exception):
    """
    A refusal with a stable code, a human message and optional structured
    fields (port, rule, field ...) for logs and API bodies.
    """

    def __init__(self, code: str, message: str, **fields: object) -> None:
        self.error = lookup(code)
        self.code = code
        self.message = message
        self.fields = fields
        super().__init__(f"{code}: {message}")

    @property
    def hint(self) -> str:
        return self.error.hint

    def to_json(self) -> dict[str, object]:
        """The API error envelope body."""
        body: dict[str, object] = {"code": self.code, "message": self.message}
        body.update(self.fields)
        return {"error": body}
