"""The ``messagehub`` command: users, imports, campaigns and SMTP checks from a terminal."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext
from sqlalchemy import select

from messagehub.auth.passwords import AccountError, create_user, generate_password, has_admin, set_password
from messagehub.extensions import db
from messagehub.models import Campaign, ContactList, ImportReport, Role, User


def register_commands(app: Flask) -> None:
    """Attach the command groups to ``app.cli``."""
    for group in (user_group, contacts_group, campaign_group, smtp_group):
        app.cli.add_command(group)


def main() -> None:
    """Entry point of the ``messagehub`` console script."""
    cli = FlaskGroup(create_app=_create_app, help="MessageHub: email campaigns from a self-hosted server.")
    cli.main(prog_name="messagehub")


def _create_app() -> Flask:
    """Create the app, turning a misconfigured setting into a one-line error instead of a traceback."""
    from messagehub import create_app
    from messagehub.config import ConfigError

    try:
        return create_app()
    except ConfigError as e:
        raise click.ClickException(f"invalid configuration: {e}") from None


# ---- users ---------------------------------------------------------------------

user_group = click.Group("user", help="Manage user accounts.")


@user_group.command("create")
@click.argument("username")
@click.option("--role", type=click.Choice([r.value for r in Role]), default=Role.OPERATOR.value, show_default=True)
@click.password_option(help="The password; asked for when not given.")
@with_appcontext
def user_create(username: str, role: str, password: str) -> None:
    """Create a user account."""
    try:
        create_user(db.session, username, password, role)
    except AccountError as e:
        raise click.ClickException(str(e)) from e

    db.session.commit()
    click.echo(f"Created {role} {username}.")


@user_group.command("ensure-admin")
@click.option("--username", default="admin", show_default=True)
@with_appcontext
def user_ensure_admin(username: str) -> None:
    """Create the first admin with a one-time password, unless an admin exists."""
    if has_admin(db.session):
        return

    password = generate_password()
    try:
        create_user(db.session, username, password, Role.ADMIN.value, must_change=True)
    except AccountError as e:
        raise click.ClickException(str(e)) from e
    db.session.commit()
    click.echo(
        f"\nCreated the first admin account.\n  user name: {username}\n  one-time password: {password}\n"
        "You will choose your own password at the first login. This is shown only once.\n"
    )


@user_group.command("reset-password")
@click.argument("username")
@with_appcontext
def user_reset_password(username: str) -> None:
    """Give a user a new one-time password, to be changed at the next login."""
    user = db.session.execute(select(User).where(User.username == username)).scalar()
    if user is None:
        raise click.ClickException(f"User {username!r} not found.")

    password = generate_password()
    set_password(user, password)
    user.must_change_password = True
    db.session.commit()
    click.echo(f"New one-time password for {username}: {password}\nIt must be changed at the next login.")


# ---- contacts ------------------------------------------------------------------

contacts_group = click.Group("contacts", help="Import and inspect contact lists.")


@contacts_group.command("import")
@click.argument("list_name")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--country", default=None, help="Two-letter country for phone numbers without a prefix.")
@with_appcontext
def contacts_import(list_name: str, path: Path, country: str | None) -> None:
    """Import a CSV file into a list, creating the list if needed."""
    from messagehub.contacts.loading import load_file, start_report

    contact_list = db.session.execute(select(ContactList).where(ContactList.name == list_name)).scalar()
    if contact_list is None:
        contact_list = ContactList(name=list_name)
        db.session.add(contact_list)
        db.session.flush()
    report = start_report(db.session, contact_list.id, path.name, path.stat().st_size)
    db.session.commit()

    with click.progressbar(length=max(report.bytes_total, 1), label=f"Importing {path.name}", file=sys.stderr) as bar:
        state = {"done": 0}

        def advance(current) -> None:
            bar.update(current.bytes_done - state["done"])
            state["done"] = current.bytes_done

        report_id = load_file(db.engine, report.id, path, country.upper() if country else None, advance).id

    # load_file worked in a session of its own; read the report back in this one.
    report = db.session.get(ImportReport, report_id, populate_existing=True)
    _print_report(report)
    if report.status != "finished":
        sys.exit(1)


def _print_report(report) -> None:
    click.echo(
        f"{report.status}: {report.rows} rows read, {report.added} added, {report.updated} updated, "
        f"{report.skipped} skipped, {report.rejected} rejected, {report.warnings} warnings"
    )
    if report.error:
        click.echo(f"error: {report.error}", err=True)
    for problem in report.problems[:50]:
        field = f" {problem.field}" if problem.field else ""
        click.echo(f"  line {problem.line}: {problem.kind}{field}: {problem.reason}")
    if len(report.problems) > 50:
        click.echo(f"  … and {len(report.problems) - 50} more; the web app lists them all.")


# ---- campaigns -----------------------------------------------------------------

campaign_group = click.Group("campaign", help="Inspect and send campaigns.")


@campaign_group.command("list")
@with_appcontext
def campaign_list() -> None:
    """List campaigns with their status and counters."""
    for campaign in db.session.execute(select(Campaign).order_by(Campaign.id)).scalars():
        click.echo(
            f"{campaign.id:>5}  {campaign.status:<9} {campaign.sent:>8} sent {campaign.failed:>6} failed  {campaign.name}"
        )


@campaign_group.command("send")
@click.argument("campaign_id", type=int)
@with_appcontext
def campaign_send(campaign_id: int) -> None:
    """Send a campaign from this terminal, with a progress bar; Ctrl-C pauses it."""
    from messagehub.campaigns.service import launch_problem
    from messagehub.delivery_settings import SenderNotConfigured
    from messagehub.engine import status as campaign_status
    from messagehub.engine.process import EXIT_CAMPAIGN_FAILED, run_campaign
    from messagehub.engine.workers import WorkerLost
    from messagehub.jobs import service as jobs_service
    from messagehub.supervisor.base import SupervisorError
    from messagehub.supervisor.choose import choose_supervisor

    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None:
        raise click.ClickException(f"Campaign {campaign_id} not found; `messagehub campaign list` shows them.")
    problem = launch_problem(db.session, campaign, current_app.config["SECRET_KEY"])
    if problem:
        raise click.ClickException(problem)
    try:
        jobs_service.check_no_live_run(campaign, choose_supervisor(current_app.config))
    except (campaign_status.StatusError, SupervisorError) as e:
        raise click.ClickException(str(e)) from e

    # Left "background" from an earlier run, the Jobs and Monitor pages would
    # take that run's ended unit for this one and pause the campaign.
    jobs_service.mark_foreground(db.session, campaign, jobs_service.start_kind(campaign), _terminal_user(), "terminal")

    with click.progressbar(length=1, label=f"Sending campaign {campaign_id}", file=sys.stderr, show_pos=True) as bar:

        def advance(progress) -> None:
            bar.length = max(progress.total, 1)
            bar.update(progress.done - bar.pos)

        try:
            outcome = run_campaign(campaign_id, dict(current_app.config), advance)
        except (campaign_status.StatusError, SenderNotConfigured, WorkerLost) as e:
            raise click.ClickException(str(e)) from e

    p = outcome.progress
    click.echo(f"{outcome.status}: {p.sent} sent, {p.failed} failed, {p.skipped} skipped, {p.queued} queued")
    if outcome.error:
        click.echo(f"error: {outcome.error}", err=True)
    if outcome.status == campaign_status.FAILED:
        sys.exit(EXIT_CAMPAIGN_FAILED)


def _terminal_user() -> str:
    """Return the name of the user running this command, for the job history."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # No login name in the environment and no passwd entry, as in some containers.
        return f"uid {os.getuid()}"


# ---- SMTP ----------------------------------------------------------------------

smtp_group = click.Group("smtp", help="Check the SMTP server.")


@smtp_group.command("check")
@click.option("--to", "test_recipient", default=None, help="Also send a test message to this address.")
@click.option("--from", "sender", default=None, help="Envelope sender of the test message.")
@with_appcontext
def smtp_check(test_recipient: str | None, sender: str | None) -> None:
    """Check name lookup, connect, TLS, login and a test message, and report the step that fails."""
    from messagehub.delivery_settings import load_smtp_settings
    from messagehub.providers.diagnostics import check_smtp
    from messagehub.secretbox import SecretUnreadable

    try:
        settings = load_smtp_settings(db.session, current_app.config["SECRET_KEY"])
    except SecretUnreadable as e:
        raise click.ClickException(str(e)) from e
    if settings is None:
        raise click.ClickException("SMTP is not configured: set the server in the web app's Settings page.")

    steps = check_smtp(settings, test_recipient=test_recipient, sender=sender or test_recipient or f"messagehub@{settings.host}")
    for step in steps:
        mark = "ok  " if step.ok else "FAIL"
        click.echo(f"{mark} {step.name:<13} {step.seconds:6.2f} s  {step.detail}")
    if not all(step.ok for step in steps):
        sys.exit(1)
