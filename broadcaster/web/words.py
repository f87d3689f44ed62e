"""The words of the customers' web pages (the incident page, preferences, unsubscribe) in
each language they are written in, and which language a page is shown in; also our answers
to their text messages (:data:`SMS_WORDS`).

A word missing from a language is shown in English. :func:`say` gives a word as HTML: the
word and every value put into it escaped, except :class:`Html` made by the page itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from typing import Final

FALLBACK: Final = "en"

WORDS: Final[Mapping[str, Mapping[str, str]]] = {
    "en": {
        # The incident page.
        "not_found": "Not found",
        "no_such_incident": "There is no such incident.",
        "status": "Status: {status}",
        "status.investigating": "Investigating",
        "status.identified": "Cause identified, fix under way",
        "status.monitoring": "Fix applied, monitoring",
        "status.resolved": "Resolved",
        "severity": "severity {severity}",
        "severity.minor": "minor",
        "severity.major": "major",
        "severity.critical": "critical",
        "affects": "affects {scope}",
        "next_update": "Next update by {time}.",
        "entry.declared": "Reported",
        "entry.update": "Update",
        "entry.reopened": "Reopened",
        "entry.resolved": "Resolved",
        "cause": "Cause",
        "suspected_cause": "Suspected cause",
        "actions": "What we are doing",
        "workaround": "What you can do meanwhile",
        "remedy": "What we did to put it right",
        "prevention": "So it does not happen again",
        "compensation": "To make up for it",
        "offer": "a {kind} of {amount}",
        "offers_and": "and",
        "offer.credit": "credit",
        "offer.refund": "refund",
        "offer.voucher": "voucher",
        "offer.discount": "discount",
        # The preferences page.
        "preferences": "Your notification preferences",
        "preferences_intro": "How {org} tells you about disruptions.",
        "send_updates_to": "Send updates to",
        "no_addresses": "No addresses on file.",
        "not_working": "(not working; contact us to fix it)",
        "language": "Language",
        "save": "Save",
        "unsubscribe_all": "Stop all updates (unsubscribe)",
        "saved": "Saved.",
        "unsubscribed_notice": "You are unsubscribed: no more disruption updates.",
        "kind.email": "Email",
        "kind.sms": "Text message (SMS)",
        "kind.fcm": "App notification",
        "kind.apns": "App notification",
        "kind.webpush": "Browser notification",
        "kind.ntfy": "ntfy notification",
        "device": "device",
        "not_saved": "Not saved",
        "not_its_address": (
            "The form sent an address that is not one of its own; reload the page and try again."
        ),
        "use_the_buttons": "Use the Save or Unsubscribe button of the form.",
        "language_not_offered": "That language is not offered.",
        "no_preferences": "We have no preferences for this link any more.",
        "fresh_link": (
            "For your security, a link to your notification preferences works for a limited "
            "time. The next message {org} sends you carries a fresh one: open it to change "
            "where updates go or their language."
        ),
        "stop_now": "To stop all disruption updates now:",
        # Unsubscribing, and links that do not work.
        "unsubscribe": "Unsubscribe",
        "unsubscribe_question": "Stop all disruption updates from {org}?",
        "unsubscribed": "You are unsubscribed",
        "unsubscribed_body": (
            "You will receive no more disruption updates. Changed your mind? "
            "Contact us and we will switch them back on."
        ),
        "link_gone": "This link is no longer valid",
        "link_gone_body": "We have no subscription for this link any more.",
        "link_expired": "This link has expired",
        "link_broken": "This link does not work",
        # Why a link does not work, by its code (broadcaster.compose.links.REASONS).
        "link_reason.malformed": (
            "This is not a link we recognise: part of it may be missing. Open the link exactly "
            "as it appears in our message."
        ),
        "link_reason.tampered": (
            "This link does not match the one we sent: it may have been cut short or changed. "
            "Open the link exactly as it appears in our message."
        ),
        "link_reason.wrong_purpose": (
            "This link belongs to another of our pages: open it from our message without "
            "changing it."
        ),
        "link_reason.expired": (
            "For your security, this link works for a limited time only, and that time has passed."
        ),
        "stop_instead": (
            "To stop all disruption updates from {org}, use the unsubscribe link in our most "
            "recent email, or reply STOP to one of our text messages. Every message we send "
            "carries a fresh link to your preferences."
        ),
    },
    "nl": {
        "not_found": "Niet gevonden",
        "no_such_incident": "Deze storing bestaat niet.",
        "status": "Status: {status}",
        "status.investigating": "We onderzoeken het",
        "status.identified": "Oorzaak gevonden, we werken aan een oplossing",
        "status.monitoring": "Oplossing doorgevoerd, we houden het in de gaten",
        "status.resolved": "Opgelost",
        "severity": "ernst: {severity}",
        "severity.minor": "klein",
        "severity.major": "groot",
        "severity.critical": "kritiek",
        "affects": "betreft {scope}",
        "next_update": "Volgende update uiterlijk {time}.",
        "entry.declared": "Gemeld",
        "entry.update": "Update",
        "entry.reopened": "Heropend",
        "entry.resolved": "Opgelost",
        "cause": "Oorzaak",
        "suspected_cause": "Vermoedelijke oorzaak",
        "actions": "Wat we doen",
        "workaround": "Wat u intussen kunt doen",
        "remedy": "Wat we hebben gedaan om het te herstellen",
        "prevention": "Zo voorkomen we dat het opnieuw gebeurt",
        "compensation": "Om het goed te maken",
        "offer": "een {kind} van {amount}",
        "offers_and": "en",
        "offer.credit": "tegoed",
        "offer.refund": "terugbetaling",
        "offer.voucher": "waardebon",
        "offer.discount": "korting",
        "preferences": "Uw meldingsvoorkeuren",
        "preferences_intro": "Hoe {org} u op de hoogte houdt van storingen.",
        "send_updates_to": "Stuur updates naar",
        "no_addresses": "Er zijn geen adressen bekend.",
        "not_working": "(werkt niet; neem contact met ons op om het te herstellen)",
        "language": "Taal",
        "save": "Opslaan",
        "unsubscribe_all": "Alle updates stoppen (afmelden)",
        "saved": "Opgeslagen.",
        "unsubscribed_notice": "U bent afgemeld: u ontvangt geen storingsupdates meer.",
        "kind.email": "E-mail",
        "kind.sms": "Sms-bericht",
        "kind.fcm": "App-melding",
        "kind.apns": "App-melding",
        "kind.webpush": "Browsermelding",
        "kind.ntfy": "ntfy-melding",
        "device": "apparaat",
        "not_saved": "Niet opgeslagen",
        "not_its_address": (
            "Het formulier stuurde een adres dat er niet bij hoort; laad de pagina opnieuw en "
            "probeer het nog eens."
        ),
        "use_the_buttons": "Gebruik de knop Opslaan of Alle updates stoppen van het formulier.",
        "language_not_offered": "Die taal bieden we niet aan.",
        "no_preferences": "Bij deze link horen geen voorkeuren meer.",
        "fresh_link": (
            "Voor uw veiligheid werkt een link naar uw meldingsvoorkeuren maar een beperkte "
            "tijd. Het volgende bericht dat {org} u stuurt, bevat een nieuwe link: open die om "
            "te kiezen waar updates naartoe gaan en in welke taal."
        ),
        "stop_now": "Alle storingsupdates nu stoppen:",
        "unsubscribe": "Afmelden",
        "unsubscribe_question": "Alle storingsupdates van {org} stoppen?",
        "unsubscribed": "U bent afgemeld",
        "unsubscribed_body": (
            "U ontvangt geen storingsupdates meer. Toch van gedachten veranderd? Neem contact "
            "met ons op, dan zetten we ze weer aan."
        ),
        "link_gone": "Deze link is niet meer geldig",
        "link_gone_body": "Bij deze link hoort geen abonnement meer.",
        "link_expired": "Deze link is verlopen",
        "link_broken": "Deze link werkt niet",
        "link_reason.malformed": (
            "Deze link herkennen we niet: mogelijk ontbreekt er een deel. Open de link precies "
            "zoals hij in ons bericht staat."
        ),
        "link_reason.tampered": (
            "Deze link komt niet overeen met de link die we stuurden: mogelijk is hij afgebroken "
            "of gewijzigd. Open de link precies zoals hij in ons bericht staat."
        ),
        "link_reason.wrong_purpose": (
            "Deze link hoort bij een andere pagina van ons: open hem ongewijzigd vanuit ons "
            "bericht."
        ),
        "link_reason.expired": (
            "Voor uw veiligheid werkt deze link maar een beperkte tijd, en die is voorbij."
        ),
        "stop_instead": (
            "Wilt u geen storingsupdates van {org} meer ontvangen? Gebruik de afmeldlink in "
            "onze meest recente e-mail, of antwoord STOP op een van onze sms-berichten. Elk "
            "bericht dat we sturen bevat een nieuwe link naar uw voorkeuren."
        ),
    },
}
"""Every page word, by language and key."""

LANGUAGES: Final = tuple(WORDS)
"""The languages the pages are written in."""

SMS_WORDS: Final[Mapping[str, Mapping[str, str]]] = {
    "en": {
        "help": (
            "{org}: updates about disruptions that affect you. Reply STOP to stop them, "
            "START to resume. {url}"
        ),
    },
    "nl": {
        "help": (
            "{org}: updates over storingen die u raken. Stuur STOP om te stoppen, START om "
            "te hervatten. {url}"
        ),
    },
}
"""The words of our answers to text messages (HELP), by language and key, in the languages
of :data:`WORDS`. Plain text, kept to one SMS (GSM-7, 160 characters) with a typical
organisation name and public URL; the keywords are Twilio's (STOP, START), in every
language."""


class Html(str):
    """Markup the page made itself (escaped where it holds values): :func:`say` puts it in
    as it is."""


def word(language: str, key: str, default: str | None = None) -> str:
    """The word ``key`` in ``language`` as plain text, else in English, else ``default``
    (a key of the data, such as an unknown status, shows as itself)."""
    found = WORDS.get(language, {}).get(key) or WORDS[FALLBACK].get(key)
    if found is not None:
        return found
    if default is None:
        raise KeyError(f"no page word {key!r}")
    return default


def sms_text(language: str, key: str, /, **values: str) -> str:
    """The SMS answer ``key`` in ``language`` (else English) as plain text, with ``values``
    put in as they are."""
    found = SMS_WORDS.get(language, {}).get(key) or SMS_WORDS[FALLBACK][key]
    return found.format(**values)


def say(language: str, key: str, /, **values: str) -> str:
    """The word ``key`` in ``language`` as HTML: the word escaped, and each value escaped
    unless it is :class:`Html`."""
    safe = {name: v if isinstance(v, Html) else escape(v) for name, v in values.items()}
    return escape(word(language, key)).format(**safe)


def written_in(candidates: Iterable[str]) -> str:
    """The first of ``candidates`` the pages are written in, a regional tag read as its
    language (``nl-BE``, ``nl_be``: ``nl``); English when there is none."""
    for candidate in candidates:
        language = _match(candidate)
        if language is not None:
            return language
    return FALLBACK


def _match(tag: str) -> str | None:
    tag = tag.strip().replace("_", "-").lower()
    for language in (tag, tag.split("-")[0]):
        if language in WORDS:
            return language
    return None


def accepted(header: str | None, limit: int = 32) -> list[str]:
    """The language tags of an ``Accept-Language`` header, most wanted first (quality
    values honoured; ``q=0`` and malformed entries dropped; ``*`` kept). Only the first
    ``limit`` entries are read."""
    if not header:
        return []
    ranked: list[tuple[float, int, str]] = []
    for index, item in enumerate(header.split(",")[:limit]):
        tag, _, params = item.partition(";")
        tag = tag.strip()
        if not tag or len(tag) > 35:
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = -1.0
        if 0 < quality <= 1:
            ranked.append((-quality, index, tag))
    return [tag for _, _, tag in sorted(ranked)]


def negotiate(asked: str | None, accept_language: str | None, default: str) -> str:
    """The language of a page anyone may open: ``asked`` (``?lang=``) when the pages are
    written in it, else the first of ``accept_language`` they are written in (``*``: the
    default), else ``default``, else English."""
    wanted = [asked] if asked else []
    wanted += [default if tag == "*" else tag for tag in accepted(accept_language)]
    return written_in([*wanted, default])
