"""The bounds every input is held to, so that whatever is accepted can always be computed later.

A value that enters today is used again by timers weeks later, summed with other values, handed
to the CEL engine (64-bit integers, timestamps of the years 1–9999) and serialized by orjson
(64-bit integers, 255 levels of nesting). Anything outside these bounds is refused when it
enters, with 400 naming the field, instead of failing in a timer or a later request.

The JSON Schemas repeat these numbers (`maximum`, `pattern`: schemas cannot import Python);
tests/test_input_bounds.py checks that every copy agrees with this module. The README's
"Supported ranges" section documents them.
"""

from __future__ import annotations

from datetime import datetime

#: The largest amount of money, in whole KRW, one field may hold: 1조 원 (10^12, about 700
#: million USD), far above any monthly cloud invoice. An invoice's usage total is held to it
#: too, so every sum the service forms (usage, amount due, amount paid: at most two of these)
#: stays below 2^53 — exact in every JSON parser, JavaScript's included (RFC 7493, I-JSON) —
#: and more than nine million maximal amounts would still fit in a 64-bit integer.
MAX_AMOUNT = 1_000_000_000_000

#: The largest magnitude of any integer in a request body (I-JSON, RFC 7493 §2.2: 2^53 − 1).
#: Event data may carry fields no schema names; they are stored and may reach CEL, so they too
#: must fit everywhere they go.
MAX_JSON_INTEGER = 2**53 - 1

#: The deepest nesting of arrays and objects in a request body (the body itself is level 1). No
#: schema here goes deeper than 3; orjson serializes at most 254 levels and parses 1,024.
MAX_JSON_DEPTH = 32

#: Years of every instant the service accepts (test clocks and their advances, deposits) and of
#: usage months, as written (in the timestamp's own offset). Every timer such an input can arm
#: falls a few months later at most, far from year 9999, the last one Python and CEL represent.
FIRST_YEAR, LAST_YEAR = 2000, 2199

#: Years of birth dates (a member may be a hundred years old or more).
FIRST_BIRTH_YEAR = 1900

#: The same bounds as JSON Schema patterns, `format`-independent. A timestamp is RFC 3339 with
#: an offset; a month is YYYY-MM; a date is YYYY-MM-DD (the day is checked by the parsers).
YEAR_PATTERN = "2[01][0-9]{2}"
BIRTH_YEAR_PATTERN = "(19[0-9]{2}|2[01][0-9]{2})"
MONTH_PATTERN = f"^{YEAR_PATTERN}-(0[1-9]|1[0-2])$"
DATE_PATTERN = f"^{BIRTH_YEAR_PATTERN}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
TIMESTAMP_PATTERN = (f"^{YEAR_PATTERN}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]"
                     "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?"
                     "([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")


def year_in_range(moment: datetime) -> bool:
    """Whether an instant, as written (its own offset), falls in the supported years."""
    return FIRST_YEAR <= moment.year <= LAST_YEAR
