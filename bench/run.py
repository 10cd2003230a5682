"""``make bench``: mailgate against Postfix and against no relay at all, side by side, on loopback.

One sink (bench/sink.py: plaintext port, STARTTLS+AUTH port, throwaway CA) is
the upstream of every run; the clock starts when the load generator starts and
stops when the sink has counted all N messages.

    (a) direct          smtp-source -> sink plaintext port (no relay: the ceiling)
    (b) postfix         smtp-source -> throwaway Postfix null client -> sink STARTTLS+AUTH
    (b+) the same Postfix with smtp_tls_connection_reuse = yes (for information; not in the ratios)
    (c) mailgate relay  smtp-source -> mailgate (cut-through) -> sink STARTTLS+AUTH
    (cxN) with --instances N: relay mode with N mailgate processes on one port (reuse_port)
    (d) mailgate queue  smtp-source -> mailgate (delivery = "queue") -> sink, if this build has it

Then per-message latency (a Python load generator), one 100 MiB message and
2,000 idle app sessions through mailgate, the targets of issue 6 as PASS/MISS,
a summary on stdout and everything as JSON in bench/results/latest.json.

Settings: -n/-s/-c or BENCH_N, BENCH_SIZE, BENCH_C (see --help). Every server the
bench starts is stopped when it ends, however it ends. Needs root for Postfix.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import app
import hotspots
import procfs
from errors import BenchError
from mailgate import MailgateProcess, relay_config
from postfix import SINK_NAME, PostfixInstance
from sink_control import SinkProcess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
USER = "bench@bench.test"
MIB = 1024 * 1024
QUEUE_SKIPPED = "(d) skipped: queue mode not available in this build"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"bench: {name}={value!r}: expected a whole number") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "-n",
        "--messages",
        type=int,
        default=_env_int("BENCH_N", 5000),
        help="messages per throughput run (BENCH_N, default 5000)",
    )
    parser.add_argument(
        "-s",
        "--size",
        type=int,
        default=_env_int("BENCH_SIZE", 10240),
        help="body bytes per message (BENCH_SIZE, default 10240)",
    )
    parser.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=_env_int("BENCH_C", 20),
        help="parallel app sessions (BENCH_C, default 20)",
    )
    parser.add_argument(
        "--latency-messages",
        type=int,
        default=_env_int("BENCH_LATENCY_N", 0),
        help="messages in the loaded latency pass (default: min(N, 1000))",
    )
    parser.add_argument(
        "--serial-messages",
        type=int,
        default=_env_int("BENCH_SERIAL_N", 0),
        help="messages in the one-app-at-a-time latency pass (default: min(N, 300))",
    )
    parser.add_argument(
        "--big-size",
        type=int,
        default=_env_int("BENCH_BIG_MIB", 100) * MIB,
        help="bytes of the one big message (BENCH_BIG_MIB MiB, default 100)",
    )
    parser.add_argument(
        "--idle",
        type=int,
        default=_env_int("BENCH_IDLE", 2000),
        help="idle app sessions to hold open (BENCH_IDLE, default 2000)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=0,
        help="seconds allowed per throughput run (default 60 + 0.1 s per message)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        default=bool(os.environ.get("BENCH_PROFILE")),
        help="also profile mailgate relay mode under load with py-spy (BENCH_PROFILE=1)",
    )
    parser.add_argument(
        "--no-postfix-reuse",
        dest="postfix_reuse",
        action="store_false",
        default=os.environ.get("BENCH_POSTFIX_REUSE", "1") != "0",
        help="skip the extra run of Postfix with smtp_tls_connection_reuse = yes "
        "(BENCH_POSTFIX_REUSE=0)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=_env_int("BENCH_INSTANCES", 1),
        help="also run relay mode with this many mailgate processes sharing the port "
        "(listener.reuse_port) and report the scaling (BENCH_INSTANCES, make bench INSTANCES=2)",
    )
    parser.add_argument(
        "--scaling-only",
        action="store_true",
        default=bool(os.environ.get("BENCH_SCALING_ONLY")),
        help="with --instances: run only (c) and the N-instance pass (no Postfix, no targets)",
    )
    parser.add_argument(
        "--modes-only",
        action="store_true",
        default=bool(os.environ.get("BENCH_MODES_ONLY")),
        help="run only (c) relay and (d) queue mode (and the profiles with --profile): "
        "no Postfix, no targets; for measuring a change (BENCH_MODES_ONLY=1)",
    )
    parser.add_argument("--output", default=os.path.join(HERE, "results", "latest.json"))
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (logs, configs)"
    )
    args = parser.parse_args(argv)
    for name in ("messages", "size", "concurrency", "idle", "instances"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected a positive number")
    args.latency_messages = args.latency_messages or min(args.messages, 1000)
    args.serial_messages = args.serial_messages or min(args.messages, 300)
    args.timeout = args.timeout or 60 + 0.1 * args.messages
    return args


# --- the machine and the tools ----------------------------------------------------


def machine() -> dict[str, Any]:
    def run(*command: str) -> str:
        try:
            return subprocess.run(
                command, capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in run("lscpu").splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    cores = os.cpu_count() or 0
    info = {
        "nproc": run("nproc") or str(cores),
        "cpu": model,
        "memory_gib": round(total_kib / MIB, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postfix": run("postconf", "-dh", "mail_version"),
    }
    info["summary"] = (
        f"{info['nproc']} cores ({model}), {info['memory_gib']} GiB, Linux {info['kernel']}, "
        f"Python {info['python']}, Postfix {info['postfix']}"
    )
    return info


def checkout() -> str:
    """The commit of the mailgate checkout being benched (``+changes`` if the tree is dirty)."""
    try:
        head = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty else "")


def find_smtp_source() -> str:
    found = shutil.which("smtp-source") or (
        os.path.exists("/usr/sbin/smtp-source") and "/usr/sbin/smtp-source"
    )
    if not found or not shutil.which("postfix"):
        done = subprocess.run(
            ["sh", os.path.join(HERE, "install-postfix.sh")], timeout=900, check=False
        )
        if done.returncode != 0:
            raise BenchError(
                "smtp-source is needed: bench/install-postfix.sh could not install Postfix"
            )
        found = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not os.access(found, os.X_OK):
        raise BenchError(f"smtp-source not executable at {found}")
    return found


def raise_open_files(needed: int) -> None:
    """Idle sessions need two descriptors each in the bench and one in mailgate (children inherit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = max(needed, min(hard, 65536)) if hard != resource.RLIM_INFINITY else needed
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < needed:
        raise BenchError(
            f"open files limit is {soft}, the idle-session run needs {needed}: "
            "run as root or raise `ulimit -n`"
        )


def mailgate_binary() -> str:
    """The mailgate of this checkout's venv, or $BENCH_MAILGATE (to bench another build)."""
    if os.environ.get("BENCH_MAILGATE"):
        chosen = os.environ["BENCH_MAILGATE"]
        if not os.access(chosen, os.X_OK):
            raise BenchError(f"BENCH_MAILGATE={chosen}: not an executable mailgate command")
        return chosen
    beside = os.path.join(os.path.dirname(sys.executable), "mailgate")
    found = beside if os.access(beside, os.X_OK) else shutil.which("mailgate")
    if not found:
        raise BenchError(
            "the mailgate command is not installed: run `make bench` (it installs .venv)"
        )
    return found


# --- one bench run ------------------------------------------------------------------


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def percent(cpu: float, seconds: float) -> float:
    return round(100 * cpu / seconds, 0) if seconds > 0 else 0.0


class Bench:
    def __init__(self, args: argparse.Namespace, cleanup: contextlib.ExitStack) -> None:
        self.args = args
        self.cleanup = cleanup
        self.smtp_source = find_smtp_source()
        self.mailgate = mailgate_binary()
        raise_open_files(3 * args.idle + 512)
        self.tmp = tempfile.mkdtemp(prefix="mailgate-bench-")
        os.chmod(self.tmp, 0o755)  # Postfix's smtp (user postfix) reads the CA file here
        if not args.keep:
            cleanup.callback(shutil.rmtree, self.tmp, ignore_errors=True)
        from gateway.testing.pki import ThrowawayCA  # the project's throwaway CA (trustme)

        os.makedirs(os.path.join(self.tmp, "pki"))
        ca = ThrowawayCA(os.path.join(self.tmp, "pki"))
        cert = ca.issue("sink", SINK_NAME, "localhost", "127.0.0.1")
        os.chmod(ca.ca_file, 0o644)
        self.ca_file = ca.ca_file
        self.password = secrets.token_urlsafe(18)
        self.sink = SinkProcess(cert.cert_file, cert.key_file, USER, self.password)
        cleanup.callback(self.sink.stop)
        self.results: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": machine(),
            "mailgate": {
                "command": self.mailgate,
                "commit": checkout() if not os.environ.get("BENCH_MAILGATE") else "see command",
            },
            "parameters": {
                "messages": args.messages,
                "size": args.size,
                "concurrency": args.concurrency,
                "latency_messages": args.latency_messages,
                "serial_messages": args.serial_messages,
                "big_message_bytes": args.big_size,
                "idle_sessions": args.idle,
                "load_generator": f"{self.smtp_source} (one message per connection, HELO)",
            },
            "throughput": {},
            "load_average_at_start": os.getloadavg(),
        }

    def say(self, text: str) -> None:
        print(f"bench: {text}", file=sys.stderr, flush=True)

    # --- processes ---

    def start_mailgate(
        self, name: str, *, delivery: str | None = None, port: int = 0, reuse_port: bool = False
    ) -> MailgateProcess:
        path = os.path.join(self.tmp, f"{name}.toml")
        extra = (
            os.environ.get("BENCH_QUEUE_EXTRA", "").replace("{tmp}", self.tmp) if delivery else ""
        )
        # Each config is checked with `mailgate check` first. The listener's session limits
        # are raised for the idle sessions (builds without those keys get none); queue mode's
        # spool goes in the temp folder ([queue] path; also tried without the table).
        limits = [self.args.idle + 200, None]
        spools = [os.path.join(self.tmp, f"{name}-spool"), None] if delivery else [None]
        said = ""
        for connections, spool in ((c, q) for c in limits for q in spools):
            with open(path, "w") as handle:
                handle.write(
                    relay_config(
                        self.tmp,
                        self.sink.tls_port,
                        self.ca_file,
                        USER,
                        delivery=delivery,
                        queue_path=spool,
                        max_connections=connections,
                        extra=extra,
                        port=port,
                        reuse_port=reuse_port,
                        audit_name=f"{name}-audit.jsonl" if reuse_port else "audit.jsonl",
                    )
                )
            process = MailgateProcess(self.mailgate, path, self.password, cwd=self.tmp)
            ok, said = process.check()
            if ok:
                break
        else:
            if delivery:
                raise QueueUnavailable(said)
            raise BenchError(f"mailgate check refused the bench config {path}: {said}")
        process.start()
        self.cleanup.callback(process.stop)
        return process

    # --- measurements ---

    def throughput(
        self,
        key: str,
        port: int,
        relay_cpu: Callable[[], float] | None = None,
        memory: Callable[[], dict[str, int]] | None = None,
    ) -> dict[str, Any]:
        n = self.args.messages
        before = self.sink.stats()
        sink_cpu, cpu = self.sink.cpu_seconds(), relay_cpu() if relay_cpu else 0.0
        source_cpu, ticks = procfs.children_cpu_seconds(), procfs.machine_ticks()
        started = time.monotonic()
        app.smtp_source(
            self.smtp_source, port, n, self.args.size, self.args.concurrency, self.args.timeout
        )
        answer = self.sink.wait_for(before["messages"] + n, self.args.timeout)
        seconds = answer["at"] - started
        window = time.monotonic() - started
        ours = self.sink.cpu_seconds() - sink_cpu + procfs.children_cpu_seconds() - source_cpu
        ours += relay_cpu() - cpu if relay_cpu else 0.0
        total, idle = (now - then for now, then in zip(procfs.machine_ticks(), ticks))
        busy_cores = (os.cpu_count() or 1) * (1 - idle / total) if total else 0.0
        handshakes = answer["handshakes"] - before["handshakes"]
        run: dict[str, Any] = {
            "messages": n,
            "seconds": round(seconds, 3),
            "msgs_per_s": round(n / seconds, 1),
            "handshakes": handshakes,
            "handshakes_per_1000": round(1000 * handshakes / n, 1),
            "resumed_handshakes": answer["resumed"] - before["resumed"],
            "auths": answer["auths"] - before["auths"],
            "sink_cpu_percent": percent(self.sink.cpu_seconds() - sink_cpu, seconds),
            "smtp_source_cpu_percent": percent(procfs.children_cpu_seconds() - source_cpu, seconds),
            "machine_busy_cores": round(busy_cores, 2),
            "other_load_cores": round(max(0.0, busy_cores - ours / window), 2),
        }
        if relay_cpu:
            used = relay_cpu() - cpu
            run["relay_cpu_percent"] = percent(used, seconds)
            run["relay_cpu_ms_per_message"] = round(1000 * used / n, 2)
        if memory:
            run["peak_rss_mib"] = mib(memory().get("VmHWM"))
        self.results["throughput"][key] = run
        self.say(
            f"{key}: {n} messages in {seconds:.2f} s = {run['msgs_per_s']:.0f} msgs/s, "
            f"{handshakes} TLS handshakes at the sink"
        )
        return run

    def latency(self, port: int) -> dict[str, Any]:
        figures = {}
        for mode, count, concurrency in (
            ("c1", self.args.serial_messages, 1),
            ("loaded", self.args.latency_messages, self.args.concurrency),
        ):
            seconds = app.timed_messages(port, count, concurrency, self.args.size)
            figures[mode] = {
                "count": count,
                "concurrency": concurrency,
                "p50_ms": round(1000 * app.percentile(seconds, 0.50), 3),
                "p99_ms": round(1000 * app.percentile(seconds, 0.99), 3),
            }
        return figures

    # --- the runs ---

    def run_direct(self) -> None:
        self.say("(a) direct: smtp-source -> sink plaintext port")
        self.throughput("direct", self.sink.plain_port)

    def run_postfix(self, *, tls_connection_reuse: bool = False) -> None:
        key = "postfix_tls_reuse" if tls_connection_reuse else "postfix"
        self.say(
            f"({'b+' if tls_connection_reuse else 'b'}) Postfix null client"
            f"{' with smtp_tls_connection_reuse = yes' if tls_connection_reuse else ''} -> sink STARTTLS+AUTH"
        )
        postfix = PostfixInstance(
            os.path.join(self.tmp, key),
            self.sink.tls_port,
            self.ca_file,
            USER,
            self.password,
            tls_connection_reuse=tls_connection_reuse,
        )
        self.cleanup.callback(postfix.stop)
        port = postfix.start()
        try:
            self.throughput(key, port, relay_cpu=postfix.cpu_seconds)
        except BenchError as exc:
            raise BenchError(
                f"{exc}; Postfix's log is {postfix.root}/maillog (--keep keeps it)"
            ) from None
        finally:
            postfix.stop()

    def run_mailgate_relay(self) -> None:
        self.say("(c) mailgate relay mode -> sink STARTTLS+AUTH")
        process = self.start_mailgate("relay")
        try:
            self.throughput("mailgate_relay", process.port, process.cpu_seconds, process.memory_kib)
        except BenchError as exc:
            raise BenchError(
                f"{exc}; mailgate's audit log is {self.tmp}/audit.jsonl (--keep keeps it)"
            ) from None
        finally:
            process.stop()

    def run_mailgate_instances(self) -> None:
        """Relay mode with N processes on one port (SO_REUSEPORT): the kernel spreads the
        connections; msgs/s against the single instance's, for the cores this machine has."""
        n = self.args.instances
        self.say(f"(cx{n}) mailgate relay mode, {n} instances on one port (reuse_port)")
        processes = [self.start_mailgate("relay-1", reuse_port=True)]
        port = processes[0].port
        for number in range(2, n + 1):
            processes.append(self.start_mailgate(f"relay-{number}", port=port, reuse_port=True))
        key = f"mailgate_relay_x{n}"
        try:
            run = self.throughput(
                key,
                port,
                lambda: sum(p.cpu_seconds() for p in processes),
                lambda: {"VmHWM": max(p.memory_kib().get("VmHWM", 0) for p in processes)},
            )
        finally:
            for process in processes:
                process.stop()
        single = self.results["throughput"].get("mailgate_relay", {}).get("msgs_per_s")
        cores = os.cpu_count() or 1
        scaling = {
            "instances": n,
            "cores": cores,
            "msgs_per_s_one": single,
            "msgs_per_s_all": run["msgs_per_s"],
            "speedup": round(run["msgs_per_s"] / single, 2) if single else None,
            "other_load_cores": run["other_load_cores"],
            "note": (
                f"{n} instances on {cores} core(s), shared with the sink and smtp-source"
                + (
                    f", and {run['other_load_cores']:.1f} core(s) of other load"
                    if run["other_load_cores"] >= 0.2
                    else ""
                )
                + ": the speedup cannot exceed the cores left for mailgate"
            ),
        }
        self.results["scaling"] = scaling
        self.say(
            f"scaling: 1 instance {single} msgs/s, {n} instances {run['msgs_per_s']} msgs/s "
            f"(x{scaling['speedup']}); {scaling['note']}"
        )

    def run_mailgate_queue(self) -> None:
        try:
            process = self.start_mailgate("queue", delivery="queue")
        except QueueUnavailable as exc:
            print(QUEUE_SKIPPED, flush=True)
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.results["throughput"]["mailgate_queue"] = {
                "skipped": "queue mode not available in this build",
                "check": first,
            }
            return
        self.say("(d) mailgate queue mode -> sink STARTTLS+AUTH")
        try:
            self.throughput("mailgate_queue", process.port, process.cpu_seconds, process.memory_kib)
        finally:
            process.stop()

    def run_latency(self) -> None:
        self.say("latency: Python load generator (smtplib in threads, one message per connection)")
        latency: dict[str, Any] = {"direct": self.latency(self.sink.plain_port)}
        process = self.start_mailgate("latency")
        try:
            latency["mailgate_relay"] = self.latency(process.port)
        finally:
            process.stop()
        latency["added_p50_ms"] = round(
            latency["mailgate_relay"]["c1"]["p50_ms"] - latency["direct"]["c1"]["p50_ms"], 3
        )
        latency["added_p99_ms"] = round(
            latency["mailgate_relay"]["c1"]["p99_ms"] - latency["direct"]["c1"]["p99_ms"], 3
        )
        try:  # queue mode: the time to a durable 250, one app at a time (issue 13)
            queue = self.start_mailgate("latency-queue", delivery="queue")
        except QueueUnavailable:
            queue = None
        if queue is not None:
            try:
                seconds = app.timed_messages(
                    queue.port, self.args.serial_messages, 1, self.args.size
                )
            finally:
                queue.stop()
            latency["mailgate_queue"] = {
                "c1": {
                    "count": self.args.serial_messages,
                    "concurrency": 1,
                    "p50_ms": round(1000 * app.percentile(seconds, 0.50), 3),
                    "p99_ms": round(1000 * app.percentile(seconds, 0.99), 3),
                }
            }
            latency["queue_added_p50_ms"] = round(
                latency["mailgate_queue"]["c1"]["p50_ms"] - latency["direct"]["c1"]["p50_ms"], 3
            )
        self.results["latency"] = latency

    def run_big_message(self) -> None:
        size = self.args.big_size
        self.say(f"one {size // MIB} MiB message through mailgate relay mode")
        process = self.start_mailgate("big")
        try:
            baseline = process.memory_kib().get("VmRSS")
            before = self.sink.stats()["messages"]
            seconds = app.big_message(process.port, size)
            self.sink.wait_for(before + 1, 60)
            self.results["big_message"] = {
                "bytes": size,
                "seconds": round(seconds, 2),
                "peak_rss_mib": mib(process.memory_kib().get("VmHWM")),
                "rss_before_mib": mib(baseline),
            }
        finally:
            process.stop()

    def run_idle_sessions(self) -> None:
        count = self.args.idle
        self.say(f"{count} idle app sessions on mailgate")
        process = self.start_mailgate("idle")
        try:
            baseline = process.memory_kib().get("VmRSS")
            sessions = app.idle_sessions(process.port, count)
            try:
                memory = process.memory_kib()
            finally:
                sessions.close()
            self.results["idle_sessions"] = {
                "sessions": count,
                "rss_mib": mib(memory.get("VmRSS")),
                "peak_rss_mib": mib(memory.get("VmHWM")),
                "rss_before_mib": mib(baseline),
            }
        finally:
            process.stop()

    def run_profile(self, delivery: str | None = None) -> None:
        """py-spy on mailgate under the throughput workload: relay mode, or queue mode."""
        mode = delivery or "relay"
        spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        if not os.access(spy, os.X_OK):
            self.say("profile: installing py-spy into the venv")
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=False, timeout=600
            )
        if not os.access(spy, os.X_OK):
            self.results["profile"] = {"skipped": "py-spy could not be installed"}
            return
        self.say(f"profile: py-spy on mailgate {mode} mode under the same load")
        process = self.start_mailgate(f"profile-{mode}", delivery=delivery)
        out_dir = os.path.join(os.path.dirname(self.args.output))
        collapsed = os.path.join(out_dir, f"{mode}-profile.txt")
        recorder = subprocess.Popen(
            [
                spy,
                "record",
                "--format",
                "raw",
                "--rate",
                "250",
                "--nonblocking",
                "--threads",
                "--output",
                collapsed,
                "--pid",
                str(process.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.cleanup.callback(lambda: recorder.poll() is None and recorder.kill())
        try:
            n = self.args.messages
            before = self.sink.stats()["messages"]
            app.smtp_source(
                self.smtp_source,
                process.port,
                n,
                self.args.size,
                self.args.concurrency,
                self.args.timeout,
            )
            self.sink.wait_for(before + n, self.args.timeout)
        finally:
            recorder.send_signal(signal.SIGINT)
            try:
                recorder.wait(60)
            except subprocess.TimeoutExpired:
                recorder.kill()
            process.stop()
        if os.path.exists(collapsed):
            self.results["profile" if mode == "relay" else f"profile_{mode}"] = {
                "mode": mode,
                "collapsed_stacks": os.path.relpath(collapsed, ROOT),
                **hotspots.summarise(collapsed),
            }


class QueueUnavailable(Exception):
    """`mailgate check` refused the queue-mode config (the text is what it said)."""


def scaling_report(results: dict[str, Any], args: argparse.Namespace) -> int:
    """--scaling-only: write the results and print the single/N-instance figures."""
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=2)
    scaling = results["scaling"]
    print(
        f"mailgate relay mode, N={args.messages} S={args.size} C={args.concurrency}: "
        f"1 instance {scaling['msgs_per_s_one']} msgs/s; {scaling['instances']} instances "
        f"(reuse_port) {scaling['msgs_per_s_all']} msgs/s = x{scaling['speedup']}\n"
        f"{scaling['note']}\nresults: {os.path.relpath(args.output)}"
    )
    return 0


def modes_report(results: dict[str, Any], args: argparse.Namespace) -> int:
    """--modes-only: write the results and print relay and queue mode's figures."""
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=2)
    for key in ("mailgate_relay", "mailgate_queue"):
        run = results["throughput"].get(key, {})
        print(
            f"{key}: N={args.messages} S={args.size} C={args.concurrency}: "
            f"{run.get('msgs_per_s')} msgs/s, {run.get('relay_cpu_ms_per_message')} CPU ms/msg, "
            f"other load {run.get('other_load_cores')} cores"
        )
    for key in ("profile", "profile_queue"):
        if key in results and "samples" in results[key]:
            from hotspots import render

            print(render(results[key]))
    print(f"results: {os.path.relpath(args.output)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up on SIGTERM too
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        try:
            bench = Bench(args, cleanup)
            bench.say(
                f"N={args.messages} S={args.size} C={args.concurrency}; temporary folder {bench.tmp}"
            )
            if args.scaling_only and args.instances > 1:
                bench.run_mailgate_relay()
                bench.run_mailgate_instances()
                return scaling_report(bench.results, args)
            if args.modes_only:
                bench.run_mailgate_relay()
                bench.run_mailgate_queue()
                if args.profile:
                    bench.run_profile()
                    bench.run_profile("queue")
                return modes_report(bench.results, args)
            bench.run_direct()
            bench.run_postfix()
            if args.postfix_reuse:
                bench.run_postfix(tls_connection_reuse=True)
            bench.run_mailgate_relay()
            if args.instances > 1:
                bench.run_mailgate_instances()
            bench.run_mailgate_queue()
            bench.run_latency()
            bench.run_big_message()
            bench.run_idle_sessions()
            if args.profile:
                bench.run_profile()
                bench.run_profile("queue")
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted", file=sys.stderr)
            return 130
    from targets import evaluate, evaluate_issue13, summary

    results = bench.results
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    verdicts = evaluate(results)
    results["targets"] = [v.__dict__ for v in verdicts]
    results["targets_issue13"] = [v.__dict__ for v in evaluate_issue13(results)]
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=2)
    print(summary(results, verdicts))
    if "profile" in results and "self" in results["profile"]:
        print("\n" + hotspots.render(results["profile"]))
    print(f"\nresults: {os.path.relpath(args.output)} ({results['elapsed_s']} s)")
    if os.environ.get("BENCH_STRICT") and any(v.status == "MISS" for v in verdicts):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
