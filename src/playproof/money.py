"""Exact money (pure): decimal arithmetic that cannot round, ISO 4217 minor units, rounding
half-even to them, and the text amounts travel as.

Billing prices plays with it (billing.py); nothing here rounds but `round_amount`.
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Final

from playproof.catalog import MINOR_UNITS
from playproof.errors import CatalogError

# Decimal's default context rounds to 28 digits, and catalog decimals may have
# any number: a billed amount must never depend on that. Each operation below gets
# its own context whose precision is computed from its operands so it cannot
# round (a product has at most as many digits as its factors together; a sum at
# most its widest aligned term plus the carries), with the widest exponent range.
# The traps turn any mistake in that reasoning into an error, never a silently
# different invoice. Only `round_amount` rounds, and only where it is asked to.
EXACT_TRAPS: Final = [
    decimal.Inexact,
    decimal.Rounded,
    decimal.InvalidOperation,
    decimal.Overflow,
    decimal.Underflow,
    decimal.Clamped,
]


def _context(prec: int, traps: list[type[decimal.DecimalException]]) -> Context:
    low, high = decimal.MIN_EMIN, decimal.MAX_EMAX
    return Context(prec=max(prec, 1), rounding=ROUND_HALF_EVEN, Emin=low, Emax=high, traps=traps)


def _exact_context(digits: int) -> Context:
    return _context(digits, EXACT_TRAPS)


# For steps that only move the exponent or drop zeros (scaleb, normalize): never rounds.
EXACT: Final = _exact_context(decimal.MAX_EMAX)


def exact_product(*factors: Decimal) -> Decimal:
    """The exact product of the factors."""
    context = _exact_context(sum(len(f.as_tuple().digits) for f in factors))
    result = Decimal(1)
    for factor in factors:
        result = context.multiply(result, factor)
    return result


def exact_sum(values: Sequence[Decimal]) -> Decimal:
    """The exact sum of at least one decimal."""
    # Every value here is finite (catalog decimals, counts), so exponents are ints.
    shapes = [(len(v.as_tuple().digits), int(v.as_tuple().exponent)) for v in values]
    low = min(exponent for _, exponent in shapes)
    widest = max(digits + exponent - low for digits, exponent in shapes)
    context = _exact_context(widest + len(str(len(values))))
    total = values[0]
    for value in values[1:]:
        total = context.add(total, value)
    return total


def minor_units(currency: str | None) -> int:
    """Digits after the point of the currency's minor unit (none for no currency)."""
    if currency is None:
        return 0
    if currency not in MINOR_UNITS:
        raise CatalogError(f"currency: expected an ISO 4217 code such as 'EUR', got {currency!r}")
    return MINOR_UNITS[currency]


def round_amount(value: Decimal, currency: str | None) -> Decimal:
    """`value` rounded half-even to the currency's minor unit (0.125 EUR → 0.12)."""
    digits = minor_units(currency)
    # Room for the integer part, the minor digits and one carry (9.995 → 10.00).
    prec = max(value.adjusted(), 0) + digits + 2
    context = _context(prec, [decimal.InvalidOperation])
    return value.quantize(Decimal(1).scaleb(-digits), context=context)


def zero_amount(currency: str | None) -> Decimal:
    """Zero with the currency's minor digits (`0.00` EUR)."""
    return round_amount(Decimal(0), currency)


def decimal_text(value: Decimal) -> str:
    """A decimal in plain notation without trailing zeros: `14.2`, `1000`, `0`."""
    plain = format(value.normalize(EXACT), "f")
    return "0" if value.is_zero() else plain


def money_text(value: Decimal, currency: str | None) -> str:
    """An amount with exactly its currency's minor digits: `12.50` EUR, `125` JPY."""
    rounded = round_amount(value, currency)
    if rounded != value:
        raise ValueError(f"expected an amount in whole {currency} minor units, got {value}")
    return format(rounded.copy_abs() if rounded.is_zero() else rounded, "f")
