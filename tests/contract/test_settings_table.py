"""The README's settings table names every gunicorn setting, its "warned" rows are exactly the
settings the worker warns about at startup, and every setting of a row marked (t) has tests
that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from gunicorn.config import Config

from gunicorn_aiowsgi.startup import UNSUPPORTED

README = Path(__file__).resolve().parents[2] / "README.md"
TESTS = Path(__file__).resolve().parents[1]
SECTION = "## gunicorn's settings with this worker"
# Settings of supported gunicorn releases older than the newest, gone from it since.
GONE = {"tolerate_dangerous_framing"}  # 22.0 only


def section() -> list[str]:
    """The lines of the README's settings section, up to the next heading of its level."""
    lines = README.read_text().splitlines()
    start = lines.index(SECTION) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def rows() -> dict[str, str]:
    """Each setting named in the first column -> its row's second column. A row naming no
    setting (signals, ALPN) is keyed by its first word."""
    found = {}
    for line in section():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("Setting", "---"):
            names = re.findall(r"`([a-z0-9_]+)`", cells[0]) or [cells[0].replace("*", "").split()[0]]
            for name in names:
                found[name] = cells[1]
    return found


# Each setting of a README row marked (t) -> the tests that exercise it (test function names).
SIGNALS = ["test_term_is_graceful", "test_quit_and_int_exit_fast_with_a_request_in_flight",
           "test_usr1_reopens_log_files", "test_abrt_calls_worker_abort_then_exits",
           "test_winch_is_ignored", "test_master_only_signals_are_reset_in_the_worker",
           "test_heroku_style_term_to_every_process"]
WARNED = ["test_settings_aiohttp_cannot_honour_are_said_at_startup"]
LIMITS = ["test_limits_answer_like_gthread",
          "test_limit_request_zero_or_above_the_maximum_means_the_maximum",
          "test_max_head_size_bounds_the_head_gunicorns_limits_allow"]
TLS = ["test_tls_serves_https_and_offers_only_http11", "test_tls_client_certificates_and_ciphers"]
CERT_FILES = TLS + ["test_a_certificate_broken_at_first_boot_is_one_master_error",
                    "test_a_certificate_broken_when_a_worker_recycles_is_retried_until_it_is_fixed"]
FORWARDED = ["test_forwarded_headers_decide_like_gthread"]
PROXY = ["test_proxy_protocol_addresses_every_request_on_the_connection",
         "test_proxy_protocol_from_a_peer_not_allowed_is_refused",
         "test_proxy_protocol_garbage_is_a_400"]
RELOAD = ["test_reload_in_development", "test_reload_engine_and_reload_extra_files"]
ERRORLOG = ["test_app_and_parse_errors_use_gunicorns_wording", "test_loglevel_info_hides_debug",
            "test_logger_class_syslog_capture_output_and_debug_level"]
STATSD = ["test_statsd_gets_counters_and_durations", "test_dogstatsd_tags_on_every_metric",
          "test_an_unreachable_statsd_is_one_warning_not_one_per_gauge"]
TESTED = {
    "threads": ["test_health_path_answered_on_the_loop_while_pool_is_busy",
                "test_disconnect_mid_stream_closes_iterable_and_frees_thread"],
    "worker_connections": ["test_worker_connections_caps_open_connections",
                           "test_past_worker_connections_new_clients_wait_in_the_backlog",
                           "test_idle_keepalive_connections_give_way_to_a_waiting_client",
                           "test_connections_mid_request_are_never_closed_for_a_waiting_client",
                           "test_the_worker_raises_its_soft_open_file_limit_for_worker_connections",
                           "test_a_hard_limit_too_low_for_worker_connections_is_one_warning"],
    "max_requests": ["test_max_requests_is_counted_exactly",
                     "test_max_requests_recycling_under_load_loses_no_request"],
    "max_requests_jitter": ["test_max_requests_jitter_draws_each_workers_own_limit"],
    "timeout": ["test_a_request_longer_than_timeout_completes_also_while_draining",
                "test_a_worker_whose_loop_is_blocked_is_killed_by_the_master",
                "test_an_unreachable_statsd_is_one_warning_not_one_per_gauge", "test_heartbeat_period"],
    "graceful_timeout": ["test_term_exits_at_graceful_timeout_by_itself"],
    "keepalive": ["test_keepalive_closes_an_idle_connection_after_that_many_seconds",
                  "test_keepalive_95_holds_an_idle_connection", "test_keepalive_0_disables_keepalive",
                  "test_keepalive_never_closes_while_a_request_is_arriving"],
    "http_parser": WARNED,
    "backlog": ["test_backlog_is_the_masters"],
    "Signals": SIGNALS,
    "preload_app": ["test_preload_app_imports_in_the_master_and_serves_from_forks"],
    "reload": RELOAD, "reload_engine": RELOAD[1:], "reload_extra_files": RELOAD[1:],
    "chdir": ["test_chdir_pythonpath_and_raw_env"], "pythonpath": ["test_chdir_pythonpath_and_raw_env"],
    "raw_env": ["test_chdir_pythonpath_and_raw_env"],
    "worker_tmp_dir": ["test_user_group_and_worker_tmp_dir_in_shm"],
    "tmp_upload_dir": ["test_tmp_upload_dir_removed_while_serving_uploads_go_on_and_recycles_boot",
                       "test_tmp_upload_dir_the_workers_user_cannot_write_spools_to_the_default_directory",
                       "test_default_limit_refuses_3_gib_before_reading_and_a_raised_one_takes_it"],
    "forwarded_allow_ips": FORWARDED,
    "secure_scheme_headers": FORWARDED + ["test_secure_scheme_headers"],
    "forwarder_headers": FORWARDED, "header_map": FORWARDED + ["test_header_mapping"],
    "proxy_protocol": PROXY, "proxy_allow_ips": PROXY[1:2],
    "casefold_http_method": WARNED, "permit_unconventional_http_method": WARNED,
    "permit_obsolete_folding": WARNED, "strip_header_spaces": WARNED,
    "limit_request_line": LIMITS, "limit_request_fields": LIMITS, "limit_request_field_size": LIMITS,
    "certfile": CERT_FILES, "keyfile": CERT_FILES, "cert_reqs": TLS[1:], "ciphers": TLS[1:],
    "ca_certs": TLS[1:] + ["test_a_ca_taken_out_of_ca_certs_is_refused_from_the_next_connections"],
    "ssl_context": ["test_tls_ssl_context_hook",
                    "test_tls_a_renewed_certificate_serves_new_connections_without_a_restart",
                    "test_a_certificate_revoked_in_a_crl_the_ssl_context_hook_loads_is_refused"],
    "ALPN": TLS[:1],
    "accesslog": ["test_access_log_line_is_exact", "test_access_log_matches_gthreads"],
    "access_log_format": ["test_access_log_line_is_exact", "test_access_log_matches_gthreads"],
    "errorlog": ERRORLOG, "loglevel": ERRORLOG[1:], "capture_output": ERRORLOG[2:],
    "logger_class": ERRORLOG[2:],
    "statsd_host": STATSD, "statsd_prefix": STATSD[:1], "dogstatsd_tags": STATSD[1:2],
    "post_worker_init": ["test_worker_hooks_run_at_gunicorns_moments"],
    "pre_request": ["test_pre_request_sees_what_gthread_sees",
                    "test_what_pre_request_changes_on_req_reaches_the_app_as_under_gthread"],
    "post_request": ["test_post_request_sees_what_gthread_sees"],
    "worker_int": ["test_quit_and_int_exit_fast_with_a_request_in_flight",
                   "test_a_hook_that_raises_is_in_the_error_log_and_the_worker_still_exits"],
    "worker_abort": ["test_abrt_calls_worker_abort_then_exits",
                     "test_a_hook_that_raises_is_in_the_error_log_and_the_worker_still_exits"],
    "worker_exit": ["test_worker_hooks_run_at_gunicorns_moments"],
}


def collected_test_names() -> set[str]:
    """The name of every test function under tests/, read from the source (not imported)."""
    names = set()
    for path in TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                names.add(node.name)
    return names


def test_every_gunicorn_setting_is_in_the_table() -> None:
    missing = sorted((set(Config().settings) | GONE) - set(rows()))
    assert not missing, missing


def test_warned_rows_are_the_settings_the_worker_warns_about() -> None:
    warned = {name for name, text in rows().items() if "**warned**" in text}
    assert warned == {name for name, _, _ in UNSUPPORTED}


def test_every_row_marked_t_names_tests_that_exist() -> None:
    marked = {name for name, text in rows().items() if "(t)" in text}
    assert marked == set(TESTED), {"marked (t), no tests named": sorted(marked - set(TESTED)),
                                   "tests named, not marked (t)": sorted(set(TESTED) - marked)}
    exist = collected_test_names()
    missing = {name: sorted(set(tests) - exist) for name, tests in TESTED.items()
               if not tests or set(tests) - exist}
    assert not missing, missing
