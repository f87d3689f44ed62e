"""The words of the messages, per language. Staff text is inserted, never invented.

Each entry is a ``str.format`` pattern; the variables are listed in
:class:`broadcaster.compose.messages.MessageContext`.
"""

from __future__ import annotations

from typing import Final

TEXTS: Final[dict[str, dict[str, str]]] = {
    "en": {
        "greeting": "Dear {name},",
        "subject.first": "[{severity_label}] {title}",
        "subject.update": "Update: {title}",
        "subject.no_news": "Still working on it: {title}",
        "subject.resolution": "Resolved: {title}",
        "lead.first": "We are sorry to tell you about a disruption that affects you: {title}.",
        "lead.update": "There is news about {title}.",
        "lead.no_news": (
            "No news yet about {title}: we are still working on it, and we will keep you informed."
        ),
        "lead.resolution": "{title} is resolved.",
        "latest": "Our latest update ({when}):",
        "status": "Status: {status}.",
        "cause.known": "Cause: {cause}",
        "cause.suspected": "Suspected cause: {cause}",
        "cause.unknown": "The cause is not yet known.",
        "promise": "We will send you the next update by {when}.",
        "apology": "We apologise for the inconvenience this has caused you.",
        "link": "Follow this incident: {url}",
        "sign": "{organisation}",
        "status.investigating": "investigating",
        "status.identified": "cause identified, working on a fix",
        "status.monitoring": "fix applied, monitoring",
        "status.resolved": "resolved",
        "severity.minor": "Minor disruption",
        "severity.major": "Disruption",
        "severity.critical": "Major disruption",
    },
    "nl": {
        "greeting": "Beste {name},",
        "subject.first": "[{severity_label}] {title}",
        "subject.update": "Update: {title}",
        "subject.no_news": "We werken er nog aan: {title}",
        "subject.resolution": "Opgelost: {title}",
        "lead.first": (
            "Het spijt ons u te moeten melden dat er een storing is die u raakt: {title}."
        ),
        "lead.update": "Er is nieuws over {title}.",
        "lead.no_news": (
            "Nog geen nieuws over {title}: we werken er nog aan en houden u op de hoogte."
        ),
        "lead.resolution": "{title} is opgelost.",
        "latest": "Onze laatste update ({when}):",
        "status": "Status: {status}.",
        "cause.known": "Oorzaak: {cause}",
        "cause.suspected": "Vermoedelijke oorzaak: {cause}",
        "cause.unknown": "De oorzaak is nog niet bekend.",
        "promise": "U krijgt de volgende update uiterlijk om {when}.",
        "apology": "Onze excuses voor het ongemak dat dit u heeft bezorgd.",
        "link": "Volg deze storing: {url}",
        "sign": "{organisation}",
        "status.investigating": "we onderzoeken het",
        "status.identified": "oorzaak gevonden, we werken aan een oplossing",
        "status.monitoring": "oplossing toegepast, we houden het in de gaten",
        "status.resolved": "opgelost",
        "severity.minor": "Kleine storing",
        "severity.major": "Storing",
        "severity.critical": "Grote storing",
    },
}
