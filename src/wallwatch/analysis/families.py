"""Injector families: group forged replies by their header fingerprint, then name them.

Grouping comes first and needs no labels: replies judged injected are keyed by what
the wire shows of their maker -- the AA bit, whether the answer names its owner with
the ``c0 0c`` pointer or the full name, whether OPT was dropped, the answer TTL, and,
when the prober ran with ``--raw-capture``, the DF bit and a zero IP ID -- and each
family is described by its IP TTL spread. A family is then *named* when it fits a
published profile ([triplet-2021]; [gfwrev-2009], Triplet Table 3, gfwrev09); one that fits none is
reported as ``unknown`` (Triplet's "Injector X") rather than forced into a label.
"""

from __future__ import annotations

from dataclasses import dataclass

from wallwatch.analysis.attribution import sql_set
from wallwatch.vocab import Reading, outcomes


@dataclass(frozen=True, slots=True)
class Sign:
    """What one published injector's replies look like on the wire.

    One definition, read two ways: the analysis names a family of forged replies by
    it (:data:`FAMILIES_FROM_PARTS_SQL`), and the shield (:mod:`wallwatch.shield`) drops
    a single reply that fits it. Every published injector drops the query's OPT
    record, so a reply with OPT fits none. DF and IP ID count only where they were
    captured (``--raw-capture``); unknown, they do not decide.
    """

    profile: str
    aa: bool | None = None
    #: ``pointer`` (the answer's owner is the ``c0 0c`` pointer) or ``full``.
    name_form: str | None = None
    answer_ttls: tuple[int, ...] = ()
    df: bool | None = None
    ip_id_zero: bool | None = None
    #: Needs a family's IP TTL spread (randomised per reply): one reply cannot show it.
    spread: bool = False

    def sql(self) -> str:
        """The condition over a family row (``aa``, ``name_form``, ``answer_ttl``, ...)."""
        parts = ["NOT edns"]
        if self.aa is not None:
            parts.append("aa" if self.aa else "NOT aa")
        if self.name_form is not None:
            parts.append(f"name_form = '{self.name_form}'")
        if self.answer_ttls:
            parts.append(f"answer_ttl IN ({', '.join(map(str, self.answer_ttls))})")
        if self.df is not None:
            parts.append("coalesce(df, true)" if self.df else "coalesce(NOT df, true)")
        if self.ip_id_zero is not None:
            parts.append("coalesce(ip_id_zero, true)" if self.ip_id_zero
                         else "coalesce(NOT ip_id_zero, true)")  # fmt: skip
        if self.spread:
            parts.append("distinct_ip_ttls >= 5 AND max_ip_ttl - min_ip_ttl >= 32")
        return " AND ".join(parts)

    def fits(self, *, aa: bool, name_form: str, answer_ttl: int | None, edns: bool,
             df: bool | None = None, ip_id_zero: bool | None = None) -> bool:  # fmt: skip
        """Whether one reply fits (never for a sign that needs a family's spread)."""
        return (
            not self.spread and not edns
            and (self.aa is None or aa == self.aa)
            and (self.name_form is None or name_form == self.name_form)
            and (not self.answer_ttls or answer_ttl in self.answer_ttls)
            and (self.df is None or df is None or df == self.df)
            and (self.ip_id_zero is None or ip_id_zero is None or ip_id_zero == self.ip_id_zero)
        )  # fmt: skip


#: The published injectors, tried in order ([triplet-2021] Table 3; [gfwrev-2009]).
SIGNS: tuple[Sign, ...] = (
    Sign("injector1", aa=True, name_form="full", answer_ttls=(60,), df=False),
    Sign("injector3", aa=False, name_form="pointer", answer_ttls=(130, 234, 236), df=False,
         ip_id_zero=True),
    Sign("type1-2009", name_form="pointer", answer_ttls=(300,)),
    Sign("type2-2009", name_form="full", answer_ttls=(86400,)),
    Sign("injector2", aa=False, name_form="pointer", df=True, spread=True),
)  # fmt: skip


def profile_case() -> str:
    """The SQL that names a family by the first sign it fits, ``unknown`` otherwise."""
    whens = " ".join(f"WHEN {sign.sql()} THEN '{sign.profile}'" for sign in SIGNS)
    return f"CASE {whens} ELSE 'unknown' END"


#: Per injected reply, the header features that tell its maker apart (one definition:
#: the families below and the watch's per-minute fingerprint counts both read it).
INJECTED_SQL = f"""
    SELECT v.measurement_uid, v.response_index, v.ip_ttl, v.edns, r.flags, r.df,
           r.ip_id = 0 AS ip_id_zero,
           (SELECT a.ttl FROM answers a WHERE a.measurement_uid = v.measurement_uid
              AND a.response_index = v.response_index ORDER BY a.answer_index LIMIT 1) AS answer_ttl,
           -- The owner of the first answer starts right after the question:
           -- 12 header bytes + the question name (its text length + 1) + type and class.
           substr(hex(from_base64(r.raw_response)), 2 * (12 + length(r.qname) + 1 + 4) + 1, 4)
               = 'C00C' AS pointer
    FROM reply_verdicts v
    JOIN responses r ON r.measurement_uid = v.measurement_uid
         AND r.response_index = v.response_index
    -- Packets the injector itself made (not a resolver's reply carrying forged data).
    WHERE v.outcome IN {sql_set(outcomes(Reading.PATH))}
      AND r.qname IS NOT NULL AND r.ancount > 0
"""

#: The fingerprint of one injected reply as text (the family key, all six features).
FINGERPRINT_SQL = f"""
SELECT measurement_uid, response_index,
       'aa=' || CAST((flags & 1024) <> 0 AS INTEGER)
       || ' name=' || CASE WHEN pointer THEN 'pointer' ELSE 'full' END
       || ' ttl=' || coalesce(CAST(answer_ttl AS VARCHAR), '?')
       || ' opt=' || CAST(coalesce(edns, false) AS INTEGER)
       || ' df=' || coalesce(CAST(CAST(df AS INTEGER) AS VARCHAR), '?')
       || ' ipid0=' || coalesce(CAST(CAST(ip_id_zero AS INTEGER) AS VARCHAR), '?') AS fingerprint
FROM ({INJECTED_SQL})
"""

#: Injected replies counted by fingerprint and IP TTL: what a part of the data says of the
#: families, summed by :data:`FAMILIES_FROM_PARTS_SQL` (a partitioned run sums its buckets'
#: parts; every aggregate below is exact from them).
FAMILY_PARTS_SQL = f"""
SELECT (flags & 1024) <> 0 AS aa,
       CASE WHEN pointer THEN 'pointer' ELSE 'full' END AS name_form,
       edns, answer_ttl, df, ip_id_zero, ip_ttl,
       count(*) AS replies, min(measurement_uid) AS example_measurement_uid
FROM ({INJECTED_SQL}) GROUP BY ALL
"""

#: The families from parts (``{parts}``: a relation of :data:`FAMILY_PARTS_SQL`'s rows).
FAMILIES_FROM_PARTS_SQL = """
WITH families AS (
    SELECT aa, name_form, edns, answer_ttl, df, ip_id_zero,
           CAST(sum(replies) AS BIGINT) AS replies,
           count(DISTINCT ip_ttl) AS distinct_ip_ttls,
           min(ip_ttl) AS min_ip_ttl, max(ip_ttl) AS max_ip_ttl,
           min(example_measurement_uid) AS example_measurement_uid
    FROM {parts} GROUP BY ALL
)
-- Numbered by size; ties broken by every feature, so any run numbers them alike.
SELECT 'F' || row_number() OVER (ORDER BY replies DESC, answer_ttl, example_measurement_uid,
                                          aa, name_form, edns, df, ip_id_zero) AS family,
       {profile_case} AS profile,
       *
FROM families
"""

FAMILIES_FROM_PARTS_SQL = FAMILIES_FROM_PARTS_SQL.replace("{profile_case}", profile_case())

FAMILIES_SQL = FAMILIES_FROM_PARTS_SQL.replace("{parts}", f"({FAMILY_PARTS_SQL})")
