"""One contact: view, edit, delete, unsubscribe and resubscribe."""

from __future__ import annotations

import logging

from flask import abort, flash, redirect, render_template, url_for
from flask_login import current_user

from messagehub.auth.access import role_required
from messagehub.contacts.blueprint import bp
from messagehub.contacts.editing import InvalidContact, check_contact, opt_outs_of, save_contact
from messagehub.contacts.forms import ContactForm
from messagehub.extensions import db
from messagehub.models import Contact, Role

audit = logging.getLogger("messagehub.audit")


@bp.get("/<int:list_id>/contacts/<int:contact_id>")
def show_contact(list_id: int, contact_id: int):
    """Show one contact with every attribute and any opt-out of its address or number."""
    contact = get_contact_or_404(list_id, contact_id)
    return render_template("contacts/contact.html", contact=contact, opt_outs=opt_outs_of(db.session, contact))


@bp.route("/<int:list_id>/contacts/<int:contact_id>/edit", methods=["GET", "POST"])
@role_required(Role.OPERATOR)
def edit_contact(list_id: int, contact_id: int):
    """Show the contact form, and save it with the importer's checks and normalisation."""
    contact = get_contact_or_404(list_id, contact_id)
    form = ContactForm(obj=contact)
    if not form.is_submitted():
        return _render_edit(contact, form)

    if not form.validate():
        return _render_edit(contact, form), 400

    try:
        values = check_contact(
            form.email.data, form.first_name.data, form.last_name.data, form.phone.data, form.country.data
        )
        save_contact(db.session, contact, values)
    except InvalidContact as e:
        for name, message in e.errors.items():
            form[name].errors.append(message)
        return _render_edit(contact, form), 400

    audit.info("user %s edited contact %s of list %s", current_user.username, contact.id, list_id)
    flash("Contact saved.", "success")
    return redirect(url_for("contacts.show_contact", list_id=list_id, contact_id=contact.id), code=303)


@bp.post("/<int:list_id>/contacts/<int:contact_id>/delete")
@role_required(Role.OPERATOR)
def delete_contact(list_id: int, contact_id: int):
    """Delete a contact; the campaigns it was sent keep their delivery rows."""
    contact = get_contact_or_404(list_id, contact_id)
    name = contact_label(contact)
    db.session.delete(contact)
    db.session.commit()

    audit.info("user %s deleted contact %s of list %s", current_user.username, contact_id, list_id)
    flash(f"Contact {name} deleted.", "success")
    return redirect(url_for("contacts.show_list", list_id=list_id), code=303)


@bp.post("/<int:list_id>/contacts/<int:contact_id>/unsubscribe")
@role_required(Role.OPERATOR)
def unsubscribe_contact(list_id: int, contact_id: int):
    """Mark a contact unsubscribed, so that no campaign sends to it."""
    contact = get_contact_or_404(list_id, contact_id)
    contact.unsubscribed = True
    db.session.commit()

    audit.info("user %s unsubscribed contact %s of list %s", current_user.username, contact_id, list_id)
    flash(f"{contact_label(contact)} is unsubscribed: campaigns skip this contact from now on.", "success")
    return redirect(url_for("contacts.show_contact", list_id=list_id, contact_id=contact_id), code=303)


@bp.post("/<int:list_id>/contacts/<int:contact_id>/resubscribe")
@role_required(Role.OPERATOR)
def resubscribe_contact(list_id: int, contact_id: int):
    """Clear a contact's unsubscription; opt-outs recorded by campaigns stay."""
    contact = get_contact_or_404(list_id, contact_id)
    contact.unsubscribed = False
    db.session.commit()

    audit.info("user %s resubscribed contact %s of list %s", current_user.username, contact_id, list_id)
    flash(f"{contact_label(contact)} is subscribed again.", "success")
    if opt_outs_of(db.session, contact):
        flash("Its address or number is still on the opt-out list, so campaigns still skip it there.", "warning")
    return redirect(url_for("contacts.show_contact", list_id=list_id, contact_id=contact_id), code=303)


def get_contact_or_404(list_id: int, contact_id: int) -> Contact:
    """Return the contact, or abort with 404 when it does not exist or belongs to another list."""
    contact = db.get_or_404(Contact, contact_id)
    if contact.list_id != list_id:
        abort(404)

    return contact


def contact_label(contact: Contact) -> str:
    """Return the contact's address, or its number when it has none."""
    return contact.email or contact.phone or f"#{contact.id}"


def _render_edit(contact: Contact, form: ContactForm) -> str:
    return render_template("contacts/edit.html", contact=contact, form=form)
