"""The audience check's shortcut gives the same result as rendering every contact."""

from __future__ import annotations

import random

import pytest

from messagehub.campaigns.audience_shapes import ShapeMemo, field_shapes
from messagehub.messages.templating import CampaignTemplates, TemplateProblem, TemplateRenderProblem, check_audience

# Field values of every kind a context can hold, blank strings and lists
# included, although build_context drops blank strings. The filter urlencode
# accepts a list of pairs but raises for a list of strings.
VALUES = ["Ann", "Zoë", "", "   ", 0, 7, 0.0, 2.5, True, False, None, ["a", "b"], [("x", "y")], {"k": "v"}]

FIELDS = ("first_name", "city", "n", "email")

# (subject, text body, HTML body) that the shortcut covers.
SUPPORTED = [
    ("Hi {{ first_name }}", "Hello", ""),
    ("{{ first_name | default('there') }}", "from {{ city | default(n) }}", ""),
    ("x", "{% if city %}{{ city | upper }}{% elif n is defined %}{{ n }}{% else %}{{ first_name }}{% endif %}", ""),
    ("{{ (first_name | trim) or city }}", "{{ n if first_name is undefined else first_name | title }}", ""),
    ("{{ attributes['k k'] | default('none') }}", "{{ not n }} {{ first_name and city }}", ""),
    ("{{ city ~ '!' }}", "{{ first_name | d(city, true) }}", "<p>{{ first_name | e }}</p>"),
    ("s", "", "<a href='/u/{{ email | urlencode }}'>{{ city | capitalize | lower }}</a>"),
    ("{{ (n | string) or first_name }}", "{% if city | escape %}{{ email }}{% endif %}", ""),
]

UNSUPPORTED = [
    "{% if city == 'Paris' %}{{ first_name }}{% endif %}",
    "{% for item in range(n) %}{{ first_name }}{% endfor %}",
    "{{ n + 1 }}",
    "{{ first_name | length }}",
    "{{ first_name.upper() }}",
    "{{ first_name.title }}",
    "{{ attributes }}",
    "{{ attributes[city] }}",
    "{{ attributes[1] }}",
    "{% set greeting = first_name %}{{ greeting }}",
    "{% filter upper %}{{ first_name }}{% endfilter %}",
    "{{ first_name is string }}",
    "{{ 'vip' in city }}",
    "{{ first_name | default(*city) }}",
    "{{ [first_name] }}",
]


def random_context(rng: random.Random) -> dict:
    context = {name: rng.choice(VALUES) for name in FIELDS if rng.random() < 0.7}
    attributes = {"k k": rng.choice(VALUES)} if rng.random() < 0.5 else {}
    context["attributes"] = attributes
    return context


def check_outcome(templates, contexts: list[dict]):
    """Return the check's result, or the type and text of the error it raised."""
    try:
        return check_audience(templates, ((f"contact {number}", context) for number, context in enumerate(contexts)))
    except TemplateProblem as error:
        return type(error), str(error)


class CountingTemplates:
    """CampaignTemplates that count their renders."""

    def __init__(self, templates: CampaignTemplates):
        self.templates = templates
        self.renders = 0

    def missing_fields(self, context):
        self.renders += 1
        return self.templates.missing_fields(context)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("sources", SUPPORTED)
def test_shortcut_matches_full_check(sources, seed):
    # Several seeds, so that values of one shape also come in different orders.
    rng = random.Random(seed)
    contexts = [random_context(rng) for _ in range(300)]
    templates = CampaignTemplates.compile(*sources)
    shapes = field_shapes(sources)
    assert shapes is not None
    counting = CountingTemplates(templates)

    shortcut = check_outcome(ShapeMemo(counting, shapes), contexts)
    full = check_outcome(templates, contexts)

    assert shortcut == full
    assert counting.renders < len(contexts)


def test_list_values_rendered_each_time():
    # Both lists are true, but urlencode accepts only the first: lists have no shape.
    sources = ("s", "", "<a href='/u/{{ email | urlencode }}'>")
    contexts = [{"email": [("x", "y")], "attributes": {}}, {"email": ["a", "b"], "attributes": {}}]
    memo = ShapeMemo(CampaignTemplates.compile(*sources), field_shapes(sources))

    outcome = check_outcome(memo, contexts)

    assert outcome == check_outcome(CampaignTemplates.compile(*sources), contexts)
    assert outcome[0] is TemplateRenderProblem


def test_shortcut_reports_missing_fields():
    sources = ("Hi {{ first_name }}", "{{ city | default('') }}", "")
    contexts = [{"first_name": "Ann", "attributes": {}}, {"city": "Porto", "attributes": {}}, {"attributes": {}}]
    memo = ShapeMemo(CampaignTemplates.compile(*sources), field_shapes(sources))

    result = check_outcome(memo, contexts)

    assert result.failing == 2
    assert result.examples == [("contact 1", ["first_name"]), ("contact 2", ["first_name"])]


def test_shortcut_fields_read():
    shapes = field_shapes(("{{ first_name }}", "{% if n is defined %}{{ attributes['signed up'] }}{% endif %}", ""))

    assert shapes.names == ("first_name", "n")
    assert shapes.attribute_keys == ("signed up",)


@pytest.mark.parametrize("source", UNSUPPORTED)
def test_value_dependent_template_not_shortened(source):
    assert field_shapes(("Subject", source, "")) is None


def test_value_comparison_still_caught():
    # The message prints a field only for some values of another: rendering
    # every contact is the only way to find who lacks it.
    sources = ("News", "{% if city == 'Paris' %}{{ first_name }}{% endif %}", "")
    contexts = [{"city": "Lyon", "attributes": {}}, {"city": "Paris", "attributes": {}}]

    result = check_outcome(CampaignTemplates.compile(*sources), contexts)

    assert field_shapes(sources) is None
    assert result.failing == 1
    assert result.examples == [("contact 1", ["first_name"])]
