"""What a campaign process loads stays free of Flask."""

from __future__ import annotations

import subprocess
import sys

ENGINE_MODULES = [
    "messagehub.engine.process",
    "messagehub.engine.runner",
    "messagehub.engine.sqlstore",
    "messagehub.providers.smtp",
    "messagehub.providers.outbox",
    "messagehub.providers.sendgrid",
    "messagehub.providers.ses",
    "messagehub.providers.sns",
    "messagehub.providers.twilio",
    "messagehub.provider_accounts",
    "messagehub.engine.rate",
    "messagehub.messages.mime",
    "messagehub.contacts.loading",
]


def test_engine_imports_no_flask():
    imports = "; ".join(f"import {name}" for name in ENGINE_MODULES)
    code = f"import sys; {imports}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'flask_sqlalchemy', 'flask_login', 'flask_wtf')))"

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"
