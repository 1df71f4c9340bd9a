"""An exact shortcut for the audience check: contacts alike in all the templates can test are rendered once.

For most templates, whether a contact's message renders, and which fields it
lacks, depends on each field the templates read only through its presence
and its truth value. Field values are otherwise only printed or passed
through a few filters, and neither fails for a string, a number or a boolean.
``field_shapes`` recognises such templates from their syntax trees. It
accepts output, ``if``/``elif``/``else``, field names, constants,
``attributes["..."]``, ``not``, ``and``, ``or``, ``x if c else y``, ``~``,
the tests ``defined`` and ``undefined``, and the filters in SAFE_FILTERS.
Anything else (a comparison, a loop, a call, arithmetic, another filter)
makes it return None, and the check renders every contact as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from jinja2 import Environment, TemplateSyntaxError, nodes

from messagehub.messages.templating import CampaignTemplates

# Filters that never raise for a string, a number or a boolean, and whose
# result is true or false depending only on the shape of that value (see
# ``_value_shape``), as implemented in Jinja 3.1. tests/campaigns compares
# the shortcut with full renders for each of them. Undefined values are
# handled as in the rest of the template: ``default`` replaces them, and the
# others report them as missing.
SAFE_FILTERS = frozenset(
    {"default", "d", "upper", "lower", "title", "capitalize", "trim", "escape", "e", "string", "urlencode"}
)

# The tests that depend on a value's presence only.
SAFE_TESTS = frozenset({"defined", "undefined"})

# Field values whose shape decides how the templates treat them.
_SCALAR_TYPES = (str, bool, int, float)

# Parses the campaign's sources into syntax trees. It has the sandbox's default
# delimiters, and only its parser is used, never its filters or globals.
_PARSER = Environment()

_ABSENT = object()
_UNCOVERED = object()


class UnsupportedTemplate(Exception):
    """A template construct whose outcome can depend on more than a field's presence and truth value."""


class FieldShapes:
    """The fields the templates read, as names of the context and keys of its ``attributes`` mapping."""

    def __init__(self, names: Iterable[str], attribute_keys: Iterable[str]):
        self.names = tuple(sorted(names))
        self.attribute_keys = tuple(sorted(attribute_keys))

    def key(self, context: Mapping[str, Any]) -> tuple | None:
        """Return the shape of a contact's context, that of each field read, or None.

        None means that some field contains a value the shortcut does not
        cover, such as a list, so the contact has to be rendered.
        """
        attributes = context.get("attributes", {})
        if not isinstance(attributes, Mapping):
            return None

        values = [context.get(name, _ABSENT) for name in self.names]
        values += [attributes.get(key, _ABSENT) for key in self.attribute_keys]
        shapes = [_value_shape(value) for value in values]
        if any(shape is _UNCOVERED for shape in shapes):
            return None

        return tuple(shapes)


def _value_shape(value: Any) -> tuple | None | object:
    # What the templates can tell about one field value: None when absent,
    # else its type and truth value. A string also records whether it is
    # blank, because ``trim`` turns a blank string into a false one. Values
    # of other types, such as lists, are _UNCOVERED.
    if value is _ABSENT:
        return None
    if type(value) not in _SCALAR_TYPES:
        return _UNCOVERED
    if isinstance(value, str):
        return (str, bool(value), bool(value.strip()))

    return (type(value), bool(value))


def field_shapes(sources: Iterable[str]) -> FieldShapes | None:
    """Return the fields the templates read, or None when a template's outcome may depend on more than their shapes."""
    names: set[str] = set()
    attribute_keys: set[str] = set()
    try:
        for source in sources:
            if source.strip():
                _check_statements(_PARSER.parse(source).body, names, attribute_keys)
    except (UnsupportedTemplate, TemplateSyntaxError):
        return None

    return FieldShapes(names, attribute_keys)


class ShapeMemo:
    """A campaign's templates, whose ``missing_fields`` renders once per shape of the contacts' fields.

    It is passed to ``check_audience`` in place of CampaignTemplates. A
    render that raises is not stored, because the check stops at the first one.
    """

    def __init__(self, templates: CampaignTemplates, shapes: FieldShapes):
        self.templates = templates
        self.shapes = shapes
        self._missing: dict[tuple, frozenset[str]] = {}

    def missing_fields(self, context: Mapping[str, Any]) -> set[str]:
        """Return every field the templates print but ``context`` lacks, as CampaignTemplates.missing_fields does."""
        key = self.shapes.key(context)
        if key is None:
            return self.templates.missing_fields(context)

        missing = self._missing.get(key)
        if missing is None:
            missing = frozenset(self.templates.missing_fields(context))
            self._missing[key] = missing

        return set(missing)


def _check_statements(body: list[nodes.Node], names: set[str], attribute_keys: set[str]) -> None:
    for node in body:
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                if not isinstance(child, nodes.TemplateData):
                    _check_expression(child, names, attribute_keys)
        elif isinstance(node, nodes.If):
            _check_expression(node.test, names, attribute_keys)
            _check_statements(node.body, names, attribute_keys)
            _check_statements(node.elif_, names, attribute_keys)
            _check_statements(node.else_, names, attribute_keys)
        else:
            raise UnsupportedTemplate(type(node).__name__)


def _check_expression(node: nodes.Node, names: set[str], attribute_keys: set[str]) -> None:
    if isinstance(node, nodes.Const):
        return

    if isinstance(node, nodes.Name):
        # The attributes mapping is always present, so only its items have shapes.
        if node.name == "attributes":
            raise UnsupportedTemplate("attributes used as a whole")
        names.add(node.name)
    elif isinstance(node, nodes.Getitem):
        _check_attribute_item(node, attribute_keys)
    elif isinstance(node, (nodes.Filter, nodes.Test)):
        _check_call(node, names, attribute_keys)
    elif isinstance(node, (nodes.Not, nodes.And, nodes.Or, nodes.CondExpr, nodes.Concat)):
        for child in node.iter_child_nodes():
            _check_expression(child, names, attribute_keys)
    else:
        raise UnsupportedTemplate(type(node).__name__)


def _check_attribute_item(node: nodes.Getitem, attribute_keys: set[str]) -> None:
    base, item = node.node, node.arg
    if not (isinstance(base, nodes.Name) and base.name == "attributes" and isinstance(item, nodes.Const)):
        raise UnsupportedTemplate("item of something other than attributes")
    if not isinstance(item.value, str):
        raise UnsupportedTemplate("attributes item with a key that is not a string")

    attribute_keys.add(item.value)


def _check_call(node: nodes.Filter | nodes.Test, names: set[str], attribute_keys: set[str]) -> None:
    allowed = SAFE_FILTERS if isinstance(node, nodes.Filter) else SAFE_TESTS
    if node.name not in allowed or node.dyn_args is not None or node.dyn_kwargs is not None:
        raise UnsupportedTemplate(f"{type(node).__name__.lower()} {node.name}")

    # A filter block ({% filter upper %}) is a FilterBlock statement, so node.node is set here.
    _check_expression(node.node, names, attribute_keys)
    for argument in node.args:
        _check_expression(argument, names, attribute_keys)
    for keyword in node.kwargs:
        _check_expression(keyword.value, names, attribute_keys)
