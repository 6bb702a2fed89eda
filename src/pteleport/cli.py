"""`pteleport`: start the daemon, configure a database service, print a systemd unit, version."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from common import __version__
from common.cli import add_help_command, eprint, run_app

app = typer.Typer(
    help="pteleport: certificate-based, audited access to PostgreSQL through one public port.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Run or configure a database service (agent).", no_args_is_help=True)
db_configure = typer.Typer(help="Write a database service configuration file.", no_args_is_help=True)
install_app = typer.Typer(help="Install helpers.", no_args_is_help=True)
app.add_typer(db_app, name="db")
db_app.add_typer(db_configure, name="configure")
app.add_typer(install_app, name="install")


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", "-d", help="Verbose logs and tracebacks.")] = False) -> None:
    from common.cli import DEBUG

    DEBUG["on"] = DEBUG["on"] or debug


@app.command()
def version() -> None:
    """Print the version."""
    print(f"pteleport v{__version__} python{sys.version_info.major}.{sys.version_info.minor}")


def _address(value: str | None, flag: str, *, listen: bool = False) -> None:
    """A HOST:PORT flag of the right form (for --listen, port 0 means any free port), else exit 2."""
    if value is None:
        return
    from common.errors import UsageError

    host, sep, port = value.strip().rpartition(":")
    low = 0 if listen else 1
    if not sep or not port.isdigit() or not low <= int(port) <= 65535 or (not host and not listen):
        raise UsageError(f'{flag} "{value}" is not HOST:PORT with a port from {low} to 65535, e.g. {flag}=127.0.0.1:3080')
    if listen and host.strip("[]"):
        import socket

        try:
            socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            from common.errors import BadParameter

            raise BadParameter(
                f"cannot listen on {value}: {host} is not a name or address of this machine ({exc.strerror}); "
                f"pass {flag} with one, e.g. {flag}=127.0.0.1:3080"
            ) from None


@app.command()
def dev(
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Where the cluster, PostgreSQL and logs live (default ./.data).")
    ] = None,
    listen: Annotated[
        str | None, typer.Option("--listen", help="The proxy's address (default 127.0.0.1:3080).")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="The cluster user to make (default: you).")] = None,
    pg_bindir: Annotated[
        str | None, typer.Option("--pg-bindir", help="PostgreSQL's server programs (default: PATH, then packages).")
    ] = None,
) -> None:
    """A local cluster with a PostgreSQL database, in the foreground: try pteleport in one command."""
    from pteleport.dev.cluster import run_dev

    run_dev(data_dir, listen, user, pg_bindir)


@app.command()
def start(
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="YAML config file (teleport.yaml shape).")
    ] = None,
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="Where the cluster keeps its state.")] = None,
    listen: Annotated[
        str | None, typer.Option("--listen", help="Proxy listen address (default 127.0.0.1:3080).")
    ] = None,
    public_addr: Annotated[str | None, typer.Option("--public-addr", help="Address users and agents reach.")] = None,
    cert_file: Annotated[str | None, typer.Option("--cert-file", help="Web TLS certificate (PEM).")] = None,
    key_file: Annotated[str | None, typer.Option("--key-file", help="Web TLS key (PEM).")] = None,
    cluster_name: Annotated[str | None, typer.Option("--cluster-name", help="Name of a new cluster.")] = None,
    second_factor: Annotated[str | None, typer.Option("--second-factor", help="otp or off.")] = None,
) -> None:
    """Start pteleport: auth + proxy with no config, or the services a config file enables."""
    from common.errors import UsageError
    from pteleport.startup import run_start

    _address(listen, "--listen", listen=True)
    _address(public_addr, "--public-addr")
    if second_factor not in (None, "otp", "off"):
        raise UsageError(f'--second-factor must be otp or off (got "{second_factor}")')

    run_start(
        config,
        data_dir=data_dir,
        listen=listen,
        public_addr=public_addr,
        cert_file=cert_file,
        key_file=key_file,
        cluster_name=cluster_name,
        second_factor=second_factor,
    )


# Flags shared by `db start` and `db configure create` (Teleport's names).
TokenOpt = Annotated[str, typer.Option("--token", help="Join token (value or a file holding it).")]
CaPinOpt = Annotated[list[str] | None, typer.Option("--ca-pin", help="sha256:... pin from pctl status (repeatable).")]
ProtocolOpt = Annotated[str, typer.Option("--protocol", help="Database protocol.")]
LabelsOpt = Annotated[str, typer.Option("--labels", help="Static labels k=v,k2=v2.")]
DescriptionOpt = Annotated[str, typer.Option("--description", help="Shown by ptsh db ls.")]
AwsRegionOpt = Annotated[str | None, typer.Option("--aws-region", help="RDS/Aurora region: IAM authentication.")]
CaCertOpt = Annotated[str | None, typer.Option("--ca-cert-file", "--ca-cert", help="CA of the database's certificate.")]
TlsModeOpt = Annotated[str, typer.Option("--tls-mode", help="verify-full, verify-ca or insecure.")]
PasswordFileOpt = Annotated[str | None, typer.Option("--password-file", help="File with the db user's password.")]
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="Where the service keeps its identity.")]
NodenameOpt = Annotated[str | None, typer.Option("--nodename", help="This host's name in the cluster.")]


def _agent_config(flags: dict) -> dict:
    from pteleport.dbconfig import agent_config_dict

    _address(flags.get("proxy"), "--proxy")
    _address(flags.get("uri"), "--uri")

    flags = {k: v for k, v in flags.items() if k not in ("output",)}
    flags["ca_pins"] = flags.pop("ca_pin") or []
    if "dynamic_resources_labels" in flags:
        flags["resource_labels"] = flags.pop("dynamic_resources_labels")
    return agent_config_dict(**flags)


@db_app.command("start")
def db_start(
    token: TokenOpt,
    proxy: Annotated[str, typer.Option("--proxy", "--auth-server", help="Proxy address HOST:PORT.")],
    name: Annotated[str, typer.Option("--name", help="Database name in the cluster.")],
    uri: Annotated[str, typer.Option("--uri", help="Database address HOST:PORT.")],
    protocol: ProtocolOpt = "postgres",
    ca_pin: CaPinOpt = None,
    labels: LabelsOpt = "",
    description: DescriptionOpt = "",
    aws_region: AwsRegionOpt = None,
    ca_cert_file: CaCertOpt = None,
    tls_mode: TlsModeOpt = "verify-full",
    password_file: PasswordFileOpt = None,
    data_dir: DataDirOpt = None,
    nodename: NodenameOpt = None,
) -> None:
    """Run a database service without a config file."""
    flags = dict(locals())
    from pteleport.startup import run_config_dict

    run_config_dict(_agent_config(flags))


@db_configure.command("create")
def db_configure_create(
    token: TokenOpt = "/tmp/token",  # noqa: S107, S108 - Teleport's documented default
    proxy: Annotated[str, typer.Option("--proxy", help="Proxy address HOST:PORT.")] = "0.0.0.0:3080",
    ca_pin: CaPinOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Database name in the cluster.")] = None,
    protocol: ProtocolOpt = "postgres",
    uri: Annotated[str | None, typer.Option("--uri", help="Database address HOST:PORT.")] = None,
    labels: LabelsOpt = "",
    description: DescriptionOpt = "",
    aws_region: AwsRegionOpt = None,
    ca_cert_file: CaCertOpt = None,
    tls_mode: TlsModeOpt = "verify-full",
    password_file: PasswordFileOpt = None,
    dynamic_resources_labels: Annotated[
        str, typer.Option("--dynamic-resources-labels", help="Serve db resources with these labels (k=v,...).")
    ] = "",
    data_dir: DataDirOpt = None,
    nodename: NodenameOpt = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="stdout, file (default path) or file:///PATH")
    ] = "stdout",
) -> None:
    """Write a database service config (then run: pteleport start -c FILE)."""
    flags = dict(locals())
    from pteleport.dbconfig import render_config, write_output

    write_output(render_config(_agent_config(flags)), output)


@install_app.command("systemd")
def install_systemd(
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write the unit to this file.")] = None,
    config: Annotated[str, typer.Option("--config", "-c")] = "/etc/pteleport.yaml",
    env_file: Annotated[str, typer.Option("--env-file")] = "/etc/default/pteleport",
    fd_limit: Annotated[int, typer.Option("--fd-limit")] = 524288,
    pteleport_path: Annotated[str | None, typer.Option("--pteleport-path")] = None,
) -> None:
    """Print (or write) a systemd unit that runs pteleport."""
    import shutil

    binary = pteleport_path or shutil.which("pteleport") or "/usr/local/bin/pteleport"
    unit = (
        "[Unit]\nDescription=pteleport service\nAfter=network.target\n\n"
        "[Service]\nType=simple\nRestart=on-failure\n"
        f"EnvironmentFile=-{env_file}\n"
        f"ExecStart={binary} start --config {config}\n"
        "ExecReload=/bin/kill -HUP $MAINPID\n"
        f"LimitNOFILE={fd_limit}\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    if output:
        try:
            Path(output).write_text(unit)
        except OSError as exc:
            from common.errors import BadParameter

            raise BadParameter(f"cannot write {output}: {exc.strerror or exc}; pick another --output") from None
        eprint(f"wrote the systemd unit to {output}")
    else:
        sys.stdout.write(unit)


add_help_command(app, "pteleport")


def main() -> None:
    run_app(app, "pteleport")


if __name__ == "__main__":
    main()
