"""Campaign templates: compiled once in a Jinja sandbox, rendered for each contact.

A campaign has three templates. The subject and the text body are plain text,
and the HTML body is autoescaped. A contact field that is missing or empty
fails rendering when a template prints it, so no message goes out with a blank
where a name belongs. Testing a missing field (``{% if first_name %}``,
``first_name is defined``) works, and so does ``first_name | default("there")``.
"""

from __future__ import annotations

import contextvars
import traceback
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Template, TemplateSyntaxError, nodes
from jinja2.filters import do_urlencode
from jinja2.exceptions import SecurityError, TemplateRuntimeError, UndefinedError
from jinja2.runtime import Undefined
from jinja2.sandbox import MAX_RANGE, SandboxedEnvironment

# The fields every contact has; custom attributes come on top of these.
CONTACT_FIELDS = ("email", "first_name", "last_name", "phone", "country")

# Names of the three templates, as TemplateProblem.field reports them.
SUBJECT = "subject"
TEXT_BODY = "text_body"
HTML_BODY = "html_body"

_LABELS = {SUBJECT: "Subject", TEXT_BODY: "Text body", HTML_BODY: "HTML body"}

# Largest exponent ``**`` accepts when both operands are integers: 10 ** 1000
# is instant, while 9 ** 999999999 has close to a billion digits.
_MAX_EXPONENT = 1000


class TemplateProblem(ValueError):
    """A template that cannot be used as written, so the user has to edit it.

    ``field`` is ``"subject"``, ``"text_body"`` or ``"html_body"``. ``line`` is the
    1-based line within that template, or None when no single line is at fault.
    """

    def __init__(self, field: str, line: int | None, message: str):
        where = f"{_LABELS[field]}, line {line}" if line else _LABELS[field]
        super().__init__(f"{where}: {message}")
        self.field = field
        self.line = line
        self.message = message


class TemplateSyntaxProblem(TemplateProblem):
    """A template set that ``CampaignTemplates.compile`` rejects.

    The causes are a syntax error, an unknown filter or test, a read of an
    internal attribute such as ``''.__class__``, or two empty bodies.
    """


class UnsafeTemplateProblem(TemplateProblem):
    """A template that tried, while rendering, to reach something the sandbox forbids."""


class TemplateRenderProblem(TemplateProblem):
    """A template that failed while rendering for one contact, e.g. by adding text to a number."""


class MissingFields(Exception):
    """A contact lacks fields that the templates print. ``fields`` names all of them."""

    def __init__(self, fields: set[str]):
        names = ", ".join(sorted(fields))
        super().__init__(
            f"missing contact fields: {names}. Give the contact these values, "
            'or give the template a default such as {{ first_name | default("there") }}.'
        )
        self.fields = fields


@dataclass(frozen=True)
class RenderedContent:
    """A campaign's content for one contact. ``text`` or ``html`` is empty when its template is."""

    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class AudienceCheck:
    """The contacts of an audience whose messages would fail for missing fields.

    ``examples`` lists up to the requested number of failing contacts as
    ``(label, sorted field names)``. ``missing_by_field`` counts, for each field,
    the contacts that lack it, most frequent field first.
    """

    total: int
    failing: int
    examples: list[tuple[str, list[str]]]
    missing_by_field: dict[str, int]


# While ``missing_fields`` renders, missing values add their names to this set
# instead of raising, so one pass finds all of them. A context variable keeps
# renders in other threads strict.
_collected_missing: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar(
    "collected_missing", default=None
)


class MissingFieldError(UndefinedError):
    """Raised when a template prints, or computes with, a field the contact lacks."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class MissingValue(Undefined):
    """The value of a missing field: false when tested, an error when used.

    ``{% if first_name %}``, ``first_name is defined``, ``first_name == "Ann"``,
    ``"vip" in tags`` and ``first_name | default("there")`` work on a missing
    field. Printing it, looping over it, reading its attributes or items and
    computing with it raise ``MissingFieldError``. Jinja's ``StrictUndefined``
    raises on the tests as well, which breaks ``{% if first_name %}``.
    """

    __slots__ = ()

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> MissingValue:
        self._report()
        return self

    # The base class binds these operators to its own method, so they are
    # rebound here to reach the override above.
    __add__ = __radd__ = __sub__ = __rsub__ = _fail_with_undefined_error
    __mul__ = __rmul__ = __div__ = __rdiv__ = _fail_with_undefined_error
    __truediv__ = __rtruediv__ = _fail_with_undefined_error
    __floordiv__ = __rfloordiv__ = _fail_with_undefined_error
    __mod__ = __rmod__ = _fail_with_undefined_error
    __pos__ = __neg__ = _fail_with_undefined_error
    __call__ = __getitem__ = _fail_with_undefined_error
    __lt__ = __le__ = __gt__ = __ge__ = _fail_with_undefined_error
    __pow__ = __rpow__ = _fail_with_undefined_error

    def __str__(self) -> str:
        self._report()
        return ""

    def __iter__(self) -> Iterator[Any]:
        self._report()
        return iter(())

    def __len__(self) -> int:
        self._report()
        return 0

    def __int__(self) -> int:
        self._report()
        return 0

    def __float__(self) -> float:
        self._report()
        return 0.0

    def __complex__(self) -> complex:
        self._report()
        return 0j

    def __contains__(self, item: Any) -> bool:
        return False

    def _report(self) -> None:
        # The sandbox hands out undefined values that carry SecurityError for
        # forbidden attributes. Those always raise, even while collecting.
        if self._undefined_exception is not UndefinedError:
            raise self._undefined_exception(self._undefined_message)

        name = self._field_name()
        collected = _collected_missing.get()
        if collected is None:
            raise MissingFieldError(name, self._undefined_message)

        collected.add(name)

    def _field_name(self) -> str:
        if self._undefined_name is None:
            return self._undefined_message
        return str(self._undefined_name)


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox, with ``*`` and ``**`` bounded so one expression cannot exhaust memory or CPU.

    Intercepting the operators also stops Jinja from folding them as constants
    at compile time, where ``{{ 9 ** 999999999 }}`` would otherwise hang ``compile``.
    """

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repetition(left, right)
        else:
            _check_power(left, right)

        return super().call_binop(context, operator, left, right)


def _check_repetition(left: Any, right: Any) -> None:
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, (str, list, tuple)) and isinstance(count, int):
            size = len(sequence) * count
            if size > MAX_RANGE:
                raise SecurityError(f"'*' would build a sequence of {size} items, more than the limit of {MAX_RANGE}.")


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > _MAX_EXPONENT:
        raise SecurityError(f"'**' exponent {exponent} exceeds the limit of {_MAX_EXPONENT}.")


# The text Jinja's urlencode filter writes for each byte of a string's UTF-8
# form: letters, digits, "_.-~" and "/" as they are, every other byte as %XX.
_URL_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/"
_URL_QUOTED = {byte: chr(byte) if byte in _URL_SAFE else f"%{byte:02X}" for byte in range(256)}


def urlencode(value: Any) -> str:
    """Jinja's ``urlencode`` filter, with strings quoted by one table lookup in C.

    Jinja quotes byte by byte in Python, which took a quarter of the time
    of rendering the benchmark's three templates, whose link uses the filter.
    Other values (mappings, sequences of pairs) go to Jinja's own filter.
    """
    if not isinstance(value, str):
        return do_urlencode(value)
    return value.encode("utf-8").decode("latin-1").translate(_URL_QUOTED)


def _make_environment(autoescape: bool) -> _Sandbox:
    # keep_trailing_newline: a body typed with a final line break keeps it.
    environment = _Sandbox(undefined=MissingValue, autoescape=autoescape, keep_trailing_newline=True)
    environment.filters["urlencode"] = urlencode
    return environment


_TEXT_ENVIRONMENT = _make_environment(autoescape=False)
_HTML_ENVIRONMENT = _make_environment(autoescape=True)

# NOTE: the sandbox bounds attribute access, ranges and the operators above,
# but not rendering time or output size as a whole, so nested loops over
# large ranges can still run for a long time.


class CampaignTemplates:
    """A campaign's subject, text and HTML templates, compiled once and rendered per contact."""

    def __init__(self, subject: Template, text_body: Template | None, html_body: Template | None):
        self._templates = ((SUBJECT, subject), (TEXT_BODY, text_body), (HTML_BODY, html_body))
        # Both environments start from Jinja's default globals. Merging them
        # into each contact's values once, instead of once per template out of
        # a ChainMap, halves the cost of rendering a short message.
        self._globals = dict(subject.globals)

    @classmethod
    def compile(cls, subject: str, text_body: str, html_body: str) -> CampaignTemplates:
        """Compile the three templates. A body that is empty or blank is left out of the message.

        :raises TemplateSyntaxProblem: names the template and line at fault, or
            reports that both bodies are empty.
        """
        if not text_body.strip() and not html_body.strip():
            raise TemplateSyntaxProblem(
                TEXT_BODY, None, "both bodies are empty. Write a text body, an HTML body or both."
            )

        return cls(
            subject=_compile_template(SUBJECT, subject, _TEXT_ENVIRONMENT),
            text_body=_compile_body(TEXT_BODY, text_body, _TEXT_ENVIRONMENT),
            html_body=_compile_body(HTML_BODY, html_body, _HTML_ENVIRONMENT),
        )

    def render(self, context: Mapping[str, Any]) -> RenderedContent:
        """Render the three templates for one contact's context.

        :raises MissingFields: names every field the templates print but the
            context lacks, not only the first one found.
        :raises UnsafeTemplateProblem: a template reached a forbidden attribute.
        :raises TemplateRenderProblem: a template failed on this contact's values.
        """
        values = {**self._globals, **context}
        try:
            subject, text, html = (_render(name, template, values) for name, template in self._templates)
        except MissingFieldError:
            raise MissingFields(self.missing_fields(context)) from None

        return RenderedContent(subject=subject, text=text, html=html)

    def missing_fields(self, context: Mapping[str, Any]) -> set[str]:
        """Return every field the three templates print but ``context`` lacks.

        The set is empty exactly when ``render`` raises no MissingFields.
        """
        collected: set[str] = set()
        values = {**self._globals, **context}
        token = _collected_missing.set(collected)
        try:
            for name, template in self._templates:
                _render(name, template, values)
        finally:
            _collected_missing.reset(token)

        return collected


def _compile_body(field: str, source: str, environment: _Sandbox) -> Template | None:
    if not source.strip():
        return None

    return _compile_template(field, source, environment)


def _compile_template(field: str, source: str, environment: _Sandbox) -> Template:
    try:
        tree = environment.parse(source)
        _reject_internal_attributes(field, tree)
        return environment.from_string(tree)
    except TemplateSyntaxError as error:
        raise TemplateSyntaxProblem(field, error.lineno, error.message or str(error)) from None


def _reject_internal_attributes(field: str, tree: nodes.Template) -> None:
    # The sandbox raises SecurityError for these only when the line runs, so
    # rejecting them here reports the mistake when the template is saved.
    for node in tree.find_all(nodes.Getattr):
        if node.attr.startswith("_"):
            raise TemplateSyntaxProblem(
                field,
                node.lineno,
                f"the attribute {node.attr!r} is internal, and templates may not read it. "
                f'Read a custom attribute of that name as attributes["{node.attr}"].',
            )


def _render(field: str, template: Template | None, values: dict[str, Any]) -> str:
    """Render one template from ``values``, which already hold the environment's globals."""
    if template is None:
        return ""

    try:
        return _render_shared(template, values)
    except MissingFieldError:
        raise
    except SecurityError as error:
        raise UnsafeTemplateProblem(field, _template_line(error), str(error)) from None
    except (TemplateRuntimeError, ArithmeticError, LookupError, TypeError, ValueError, RecursionError) as error:
        raise TemplateRenderProblem(field, _template_line(error), f"rendering failed: {error}") from None


def _render_shared(template: Template, values: dict[str, Any]) -> str:
    # Template.render without its copy of the values: the context reads them
    # in place, and a template's own assignments go to the context, not to
    # ``values``, so the three templates can share one dict. Built directly,
    # the context also skips listing the globals again, which only imports use.
    environment = template.environment
    context = environment.context_class(environment, values, template.name, template.blocks)
    try:
        return environment.concat(template.root_render_func(context))
    except Exception:
        # Rewrites the traceback so that its frames carry template line numbers.
        environment.handle_exception()


def _template_line(error: BaseException) -> int | None:
    # Jinja rewrites tracebacks so that template code appears as frames of a
    # file named "<template>" at the template's own line numbers.
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == "<template>"]
    return lines[-1] if lines else None


def build_context(
    email: str,
    first_name: str | None = None,
    last_name: str | None = None,
    phone: str | None = None,
    country: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build one contact's template context, leaving out empty values so they count as missing.

    Strings are stripped, and a value that is None, blank or an empty collection
    counts as empty. Custom attributes can be read by name (``{{ city }}``)
    unless the name is a contact field or ``attributes``, and always through
    the ``attributes`` mapping (``{{ attributes["signed up"] }}``).
    """
    custom = _present_values(attributes or {})
    fields = _present_values(
        {"email": email, "first_name": first_name, "last_name": last_name, "phone": phone, "country": country}
    )

    context = {name: value for name, value in custom.items() if name not in CONTACT_FIELDS and name != "attributes"}
    context.update(fields)
    context["attributes"] = custom
    return context


def _present_values(values: Mapping[str, Any]) -> dict[str, Any]:
    present = {}
    for name, value in values.items():
        if isinstance(value, str):
            value = value.strip()
        if value is None or (isinstance(value, (str, list, tuple, dict, set)) and not value):
            continue
        present[name] = value

    return present


def check_audience(
    templates: CampaignTemplates, contacts: Iterable[tuple[str, Mapping[str, Any]]], limit: int = 50
) -> AudienceCheck:
    """Find the contacts whose messages would fail for missing fields.

    ``contacts`` yields ``(label, context)`` pairs, where the label (such as the
    address or the row number) identifies the contact in ``examples``.

    :raises UnsafeTemplateProblem: a template reached a forbidden attribute.
    :raises TemplateRenderProblem: a template failed on one contact's values.
    """
    total = 0
    examples: list[tuple[str, list[str]]] = []
    missing_by_field: Counter[str] = Counter()
    failing = 0

    for label, context in contacts:
        total += 1
        missing = templates.missing_fields(context)
        if not missing:
            continue

        failing += 1
        missing_by_field.update(missing)
        if len(examples) < limit:
            examples.append((label, sorted(missing)))

    return AudienceCheck(
        total=total, failing=failing, examples=examples, missing_by_field=dict(missing_by_field.most_common())
    )
