"""Tests of campaign templates: context, missing fields, sandbox, audience check."""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path

import pytest

from messagehub.messages import mime, templating
from messagehub.messages.templating import (
    CampaignTemplates,
    MissingFields,
    TemplateRenderProblem,
    TemplateSyntaxProblem,
    UnsafeTemplateProblem,
    build_context,
    check_audience,
)


def text_only(body: str, subject: str = "News") -> CampaignTemplates:
    return CampaignTemplates.compile(subject, body, "")


def test_context_drops_empty_values():
    context = build_context("ann@example.com", "  ", None, "", "PL", {"city": " ", "tags": [], "plan": "gold"})

    assert "first_name" not in context
    assert "last_name" not in context
    assert "phone" not in context
    assert "city" not in context
    assert "tags" not in context
    assert context["attributes"] == {"plan": "gold"}


def test_context_strips_values():
    context = build_context(" ann@example.com ", " Ann ", attributes={"city": " Kraków "})

    assert context["email"] == "ann@example.com"
    assert context["first_name"] == "Ann"
    assert context["city"] == "Kraków"


def test_context_attributes_flat_and_nested():
    context = build_context("ann@example.com", attributes={"city": "Łódź", "signed up": "2024-01-02"})

    assert context["city"] == "Łódź"
    assert context["signed up"] == "2024-01-02"
    assert context["attributes"] == {"city": "Łódź", "signed up": "2024-01-02"}


def test_context_fields_win_over_attributes():
    context = build_context(
        "ann@example.com", "Ann", attributes={"first_name": "Mallory", "last_name": "Other", "attributes": "x"}
    )

    assert context["first_name"] == "Ann"
    # An empty contact field stays missing even when an attribute has its name.
    assert "last_name" not in context
    assert context["attributes"]["last_name"] == "Other"
    assert isinstance(context["attributes"], dict)


def test_default_filter_on_missing_field():
    templates = CampaignTemplates.compile('Hi {{ first_name | default("there") }}', "x", "")

    assert templates.render(build_context("a@example.com")).subject == "Hi there"
    assert templates.render(build_context("a@example.com", "  ")).subject == "Hi there"
    assert templates.render(build_context("a@example.com", "Ann")).subject == "Hi Ann"


def test_if_on_missing_field():
    templates = text_only("{% if first_name %}Dear {{ first_name }}{% else %}Hello{% endif %}")

    assert templates.render(build_context("a@example.com")).text == "Hello"
    assert templates.render(build_context("a@example.com", "Ann")).text == "Dear Ann"


@pytest.mark.parametrize(
    "body, expected",
    [
        ("{% if city is defined %}in {{ city }}{% else %}nowhere{% endif %}", "nowhere"),
        ('{% if country == "PL" %}PL{% else %}other{% endif %}', "other"),
        ('{% if "vip" in tags %}VIP{% else %}regular{% endif %}', "regular"),
        ("{% if not last_name %}no last name{% endif %}", "no last name"),
        ('{{ attributes.city | default("somewhere") }}', "somewhere"),
    ],
)
def test_tests_on_missing_field(body, expected):
    assert text_only(body).render(build_context("a@example.com")).text == expected


@pytest.mark.parametrize(
    "body, field",
    [
        ("Dear {{ first_name }}", "first_name"),
        ("{{ first_name | upper }}", "first_name"),
        ('{{ "Dear " ~ first_name }}', "first_name"),
        ("{{ attributes.city }}", "city"),
        ('{{ attributes["signed up"] }}', "signed up"),
        ("{% for tag in tags %}{{ tag }}{% endfor %}", "tags"),
        ("{{ last_name.title() }}", "last_name"),
        ("{{ phone + 1 }}", "phone"),
    ],
)
def test_render_missing_field_raises(body, field):
    with pytest.raises(MissingFields) as raised:
        text_only(body).render(build_context("a@example.com"))

    assert raised.value.fields == {field}


def test_render_reports_all_missing_fields():
    templates = CampaignTemplates.compile(
        "Offer for {{ first_name }}",
        "Dear {{ first_name }} {{ last_name }}, see you in {{ city }}.",
        "<p>{{ attributes.plan }}</p>{{ phone }}",
    )

    with pytest.raises(MissingFields) as raised:
        templates.render(build_context("a@example.com", phone="+48 512 345 021"))

    assert raised.value.fields == {"first_name", "last_name", "city", "plan"}
    assert "city, first_name, last_name, plan" in str(raised.value)


def test_missing_fields_empty_when_complete():
    templates = CampaignTemplates.compile("Hi {{ first_name }}", "{{ city }}", "<p>{{ email }}</p>")
    context = build_context("a@example.com", "Ann", attributes={"city": "Kraków"})

    assert templates.missing_fields(context) == set()
    assert templates.render(context).text == "Kraków"


def test_missing_fields_skips_untaken_branch():
    templates = text_only("{% if first_name %}{{ first_name }} {{ last_name }}{% else %}Hello{% endif %}")

    assert templates.missing_fields(build_context("a@example.com")) == set()
    assert templates.missing_fields(build_context("a@example.com", "Ann")) == {"last_name"}


def test_missing_fields_restores_strict_mode():
    templates = text_only("{{ first_name }}")
    templates.missing_fields(build_context("a@example.com"))

    with pytest.raises(MissingFields):
        templates.render(build_context("a@example.com"))


class Gate:
    """A context value that, when printed, blocks the render until another thread is done."""

    def __init__(self) -> None:
        self.printing = threading.Event()
        self.release = threading.Event()

    def __str__(self) -> str:
        self.printing.set()
        self.release.wait(timeout=5)
        return "gate"


def test_missing_fields_strict_in_other_thread():
    templates = text_only("{{ gate }}{{ first_name }}")
    gate = Gate()
    outcomes = []

    def render_while_collecting():
        gate.printing.wait(timeout=5)
        try:
            text_only("{{ first_name }}").render(build_context("a@example.com"))
            outcomes.append("rendered")
        except MissingFields:
            outcomes.append("missing")
        gate.release.set()

    thread = threading.Thread(target=render_while_collecting)
    thread.start()
    collected = templates.missing_fields({**build_context("a@example.com"), "gate": gate})
    thread.join()

    assert outcomes == ["missing"]
    assert collected == {"first_name"}


def test_render_all_three_templates():
    templates = CampaignTemplates.compile(
        "Hi {{ first_name }} <3",
        "Dear {{ first_name }} & co\n",
        "<p>Dear {{ first_name }}</p>\n",
    )

    content = templates.render(build_context("a@example.com", "Ann <b>"))

    assert content.subject == "Hi Ann <b> <3"
    assert content.text == "Dear Ann <b> & co\n"
    assert content.html == "<p>Dear Ann &lt;b&gt;</p>\n"


def test_assignment_stays_in_its_template():
    templates = CampaignTemplates.compile(
        '{% set first_name = "Bob" %}{{ first_name }}', "{{ first_name }}", "{{ range(2) | list }}"
    )
    context = build_context("a@example.com", "Ann")

    content = templates.render(context)

    assert (content.subject, content.text, content.html) == ("Bob", "Ann", "[0, 1]")
    assert context["first_name"] == "Ann"


def test_html_safe_filter_still_allowed():
    templates = CampaignTemplates.compile("s", "", '{{ "<b>bold</b>" | safe }} {{ first_name }}')

    assert templates.render(build_context("a@example.com", "<i>")).html == "<b>bold</b> &lt;i&gt;"


def test_empty_text_body_allowed():
    templates = CampaignTemplates.compile("s", "  \n", "<p>{{ email }}</p>")

    content = templates.render(build_context("a@example.com"))

    assert content.text == ""
    assert content.html == "<p>a@example.com</p>"


def test_empty_html_body_allowed():
    templates = CampaignTemplates.compile("s", "{{ email }}", "")

    content = templates.render(build_context("a@example.com"))

    assert content.text == "a@example.com"
    assert content.html == ""


def test_both_bodies_empty_rejected():
    with pytest.raises(TemplateSyntaxProblem) as raised:
        CampaignTemplates.compile("s", " ", "\n")

    assert raised.value.field == "text_body"
    assert raised.value.line is None
    assert "both bodies are empty" in str(raised.value)


@pytest.mark.parametrize(
    "sources, field, line",
    [
        (("Hi {{ first_name ", "x", ""), "subject", 1),
        (("s", "line one\nline two\n{% if x %}\n{% endfor %}", ""), "text_body", 4),
        (("s", "", "<p>\n{% for x in %}</p>"), "html_body", 2),
        (("s", "a\nb\n{{ x | no_such_filter }}", ""), "text_body", 3),
        (("s", "{{ x is no_such_test }}", ""), "text_body", 1),
    ],
)
def test_syntax_problem_names_template_and_line(sources, field, line):
    with pytest.raises(TemplateSyntaxProblem) as raised:
        CampaignTemplates.compile(*sources)

    assert raised.value.field == field
    assert raised.value.line == line
    assert f"line {line}" in str(raised.value)


def test_internal_attribute_rejected_at_compile():
    with pytest.raises(TemplateSyntaxProblem) as raised:
        CampaignTemplates.compile("s", "fine\n{{ ''.__class__ }}", "")

    assert raised.value.field == "text_body"
    assert raised.value.line == 2
    assert "__class__" in raised.value.message


@pytest.mark.parametrize(
    "body",
    [
        "{{ email['__class__'] }}",
        "{{ email[attributes.key] }}",
        "{{ (email | attr('__class__')) }}",
    ],
)
def test_sandbox_blocks_internal_attribute_at_render(body):
    templates = CampaignTemplates.compile("s", "", "ok\n" + body)

    with pytest.raises(UnsafeTemplateProblem) as raised:
        templates.render(build_context("a@example.com", attributes={"key": "__class__"}))

    assert raised.value.field == "html_body"
    assert raised.value.line == 2
    assert "unsafe" in raised.value.message


def test_sandbox_if_on_internal_attribute_is_false():
    templates = text_only("{% if email['__class__'] %}leak{% else %}none{% endif %}")

    assert templates.render(build_context("a@example.com")).text == "none"


@pytest.mark.parametrize("body", ["{{ 'x' * 1000000 }}", "{{ [1, 2] * 60000 }}", "{{ 9 ** 999999999 }}"])
def test_sandbox_bounds_operators(body):
    started = time.perf_counter()
    templates = text_only(body)

    with pytest.raises(UnsafeTemplateProblem):
        templates.render(build_context("a@example.com"))

    assert time.perf_counter() - started < 1.0


def test_small_operators_still_work():
    assert text_only("{{ '-' * 3 }} {{ 2 ** 10 }}").render(build_context("a@example.com")).text == "--- 1024"


def test_render_problem_names_template_and_line():
    templates = CampaignTemplates.compile("s", "one\ntwo\n{{ first_name + 1 }}", "")

    with pytest.raises(TemplateRenderProblem) as raised:
        templates.render(build_context("a@example.com", "Ann"))

    assert raised.value.field == "text_body"
    assert raised.value.line == 3
    assert isinstance(raised.value, ValueError)


def test_recursive_macro_is_render_problem():
    templates = text_only("{% macro loop() %}{{ loop() }}{% endmacro %}{{ loop() }}")

    with pytest.raises(TemplateRenderProblem) as raised:
        templates.render(build_context("a@example.com"))

    assert raised.value.field == "text_body"


def test_trailing_newline_kept():
    assert text_only("Hello\n\n").render(build_context("a@example.com")).text == "Hello\n\n"


def test_render_matches_missing_fields_on_sample(sample_contexts):
    templates = CampaignTemplates.compile(
        "{{ first_name }}, news from {{ city }}",
        "Dear {{ first_name }} {{ last_name }}\n{% if phone %}We will call {{ phone }}.{% endif %}",
        '<p>{{ attributes.tags | default("no tags") }}</p>',
    )

    for context in sample_contexts:
        missing = templates.missing_fields(context)
        try:
            templates.render(context)
            raised = set()
        except MissingFields as error:
            raised = error.fields
        assert raised == missing, context["email"]


def test_audience_check_counts_sample(sample_rows, sample_contexts):
    templates = CampaignTemplates.compile("Hello {{ first_name }}", "Your tags: {{ tags }}", "<p>{{ email }}</p>")
    contacts = [(f"row {number}", context) for number, context in enumerate(sample_contexts, start=1)]

    check = check_audience(templates, contacts, limit=5)

    no_tags = [number for number, row in enumerate(sample_rows, start=1) if not row["tags"].strip()]
    no_email = [number for number, row in enumerate(sample_rows, start=1) if not row["email"].strip()]
    failing = sorted(set(no_tags) | set(no_email))
    assert check.total == len(sample_rows)
    assert check.failing == len(failing)
    assert check.missing_by_field == {"tags": len(no_tags), "email": len(no_email)}
    assert [label for label, _ in check.examples] == [f"row {number}" for number in failing[:5]]


def test_audience_check_sample_has_gaps(sample_rows):
    # The counting test above proves something only if the sample has gaps in both fields.
    assert any(not row["tags"].strip() for row in sample_rows)
    assert any(not row["email"].strip() for row in sample_rows)


def test_audience_check_example_fields_sorted():
    templates = CampaignTemplates.compile("{{ last_name }}", "{{ first_name }} {{ city }}", "")
    contacts = [("row 2", build_context("a@example.com")), ("row 3", build_context("b@example.com", "B", "C"))]

    check = check_audience(templates, contacts)

    assert check.examples == [("row 2", ["city", "first_name", "last_name"]), ("row 3", ["city"])]
    assert check.failing == 2
    assert check.missing_by_field == {"city": 2, "first_name": 1, "last_name": 1}


@pytest.mark.parametrize("module", [templating, mime])
def test_module_imports_no_flask(module):
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))

    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not [name for name in imported if name.split(".")[0] in ("flask", "flask_sqlalchemy", "werkzeug")]
