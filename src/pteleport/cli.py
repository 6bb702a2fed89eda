"""`pteleport`: start the daemon, configure a database service, print a systemd unit, version."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from common import __version__
from common.cli import eprint, run_app

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
    from pteleport.startup import run_start

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


@db_app.command("start")
def db_start(
    token: Annotated[str, typer.Option("--token", help="Join token (value or a file holding it).")],
    proxy: Annotated[str, typer.Option("--proxy", "--auth-server", help="Proxy address HOST:PORT.")],
    name: Annotated[str, typer.Option("--name", help="Database name in the cluster.")],
    uri: Annotated[str, typer.Option("--uri", help="Database address HOST:PORT.")],
    protocol: Annotated[str, typer.Option("--protocol")] = "postgres",
    ca_pin: Annotated[list[str] | None, typer.Option("--ca-pin", help="sha256:... pin of the cluster CA.")] = None,
    labels: Annotated[str, typer.Option("--labels", help="k=v,k2=v2")] = "",
    description: Annotated[str, typer.Option("--description")] = "",
    aws_region: Annotated[str | None, typer.Option("--aws-region")] = None,
    ca_cert_file: Annotated[str | None, typer.Option("--ca-cert-file", "--ca-cert")] = None,
    tls_mode: Annotated[str, typer.Option("--tls-mode", help="verify-full, verify-ca or insecure.")] = "verify-full",
    password_file: Annotated[str | None, typer.Option("--password-file")] = None,
    data_dir: Annotated[str | None, typer.Option("--data-dir")] = None,
    nodename: Annotated[str | None, typer.Option("--nodename")] = None,
) -> None:
    """Run a database service without a config file."""
    from pteleport.dbconfig import agent_config_dict
    from pteleport.startup import run_config_dict

    doc = agent_config_dict(
        token=token,
        proxy=proxy,
        name=name,
        uri=uri,
        protocol=protocol,
        ca_pins=ca_pin or [],
        labels=labels,
        description=description,
        aws_region=aws_region,
        ca_cert_file=ca_cert_file,
        tls_mode=tls_mode,
        password_file=password_file,
        data_dir=data_dir,
        nodename=nodename,
    )
    run_config_dict(doc)


@db_configure.command("create")
def db_configure_create(
    token: Annotated[str, typer.Option("--token", help="Join token (value or a file holding it).")] = "/tmp/token",  # noqa: S107, S108
    proxy: Annotated[str, typer.Option("--proxy", help="Proxy address HOST:PORT.")] = "0.0.0.0:3080",
    ca_pin: Annotated[list[str] | None, typer.Option("--ca-pin", help="sha256:... (repeatable).")] = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    protocol: Annotated[str, typer.Option("--protocol")] = "postgres",
    uri: Annotated[str | None, typer.Option("--uri")] = None,
    labels: Annotated[str, typer.Option("--labels", help="k=v,k2=v2")] = "",
    description: Annotated[str, typer.Option("--description")] = "",
    aws_region: Annotated[str | None, typer.Option("--aws-region")] = None,
    ca_cert_file: Annotated[str | None, typer.Option("--ca-cert-file")] = None,
    tls_mode: Annotated[str, typer.Option("--tls-mode")] = "verify-full",
    password_file: Annotated[str | None, typer.Option("--password-file")] = None,
    dynamic_resources_labels: Annotated[str, typer.Option("--dynamic-resources-labels")] = "",
    data_dir: Annotated[str | None, typer.Option("--data-dir")] = None,
    nodename: Annotated[str | None, typer.Option("--nodename")] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="stdout, file (default path) or file:///PATH")
    ] = "stdout",
) -> None:
    """Write a database service config (then run: pteleport start -c FILE)."""
    from pteleport.dbconfig import agent_config_dict, render_config, write_output

    doc = agent_config_dict(
        token=token,
        proxy=proxy,
        name=name,
        uri=uri,
        protocol=protocol,
        ca_pins=ca_pin or [],
        labels=labels,
        description=description,
        aws_region=aws_region,
        ca_cert_file=ca_cert_file,
        tls_mode=tls_mode,
        password_file=password_file,
        data_dir=data_dir,
        nodename=nodename,
        resource_labels=dynamic_resources_labels,
    )
    write_output(render_config(doc), output)


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
        Path(output).write_text(unit)
        eprint(f"wrote the systemd unit to {output}")
    else:
        sys.stdout.write(unit)


def main() -> None:
    run_app(app, "pteleport")


if __name__ == "__main__":
    main()
