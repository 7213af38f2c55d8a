#!/usr/bin/env python3
"""Write the seed corpora of the fuzz targets from the FHIR test fixtures.

Run from the repository root: python3 fuzz/seeds/make_seeds.py
The envelope seeds (fuzz/corpus/envelope_decode) are real stored events,
kept as they were exported; this script does not touch them.
"""

import copy
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "crates/fhir/tests/fixtures"
CORPUS = ROOT / "fuzz/corpus"


def write(target, name, data):
    path = CORPUS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def compact(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --- bundle_reader: the fixtures, compact and pretty, and a few shapes ---
message = json.loads((FIXTURES / "referral-message.json").read_text())
service_request = json.loads((FIXTURES / "referral-service-request.json").read_text())
write("bundle_reader", "referral-message.json", (FIXTURES / "referral-message.json").read_bytes())
write("bundle_reader", "referral-service-request.json", (FIXTURES / "referral-service-request.json").read_bytes())
write("bundle_reader", "referral-message-compact.json", compact(message))
write("bundle_reader", "referral-service-request-compact.json", compact(service_request))
update = copy.deepcopy(message)
update["entry"][0]["resource"]["reason"]["coding"][0]["code"] = "update"
update["entry"][1]["resource"]["status"] = "revoked"
write("bundle_reader", "referral-update-revoked.json", compact(update))
red = copy.deepcopy(message)
for e in red["entry"]:
    if e["resource"]["resourceType"] == "Observation":
        e["resource"]["valueBoolean"] = True
write("bundle_reader", "referral-red-flags.json", compact(red))
write("bundle_reader", "minimal-bundle.json", '{"resourceType":"Bundle","type":"message","entry":[]}')


# --- triage_input: protobuf Referral messages (proto/mskflow/intake/v1) ---
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(number, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(number << 3 | 2) + varint(len(data)) + data


def field_bool(number, value):
    return varint(number << 3 | 0) + varint(1 if value else 0)


def coding(system, code, display=None):
    out = field_bytes(1, system) + field_bytes(2, code)
    if display:
        out += field_bytes(3, display)
    return out


def referral(red_flags=(), start_back=None, priority="routine", birth_date="1968-04-12",
             reason=("30989003", "Knee pain"), body_site=("72696002", "Knee region structure")):
    sender = field_bytes(1, "A81001") + field_bytes(2, "https://gp.example.nhs.uk/fhir/messages") \
        + field_bytes(3, "5b1e7c2a-0d4f-4a8e-b3c6-7d9e0f1a2b3c") + field_bytes(4, "GP Clinical System")
    patient = field_bytes(1, "9434765919") + field_bytes(2, "Smith") + field_bytes(3, "Jane") \
        + field_bytes(4, birth_date) + field_bytes(5, "female") + field_bytes(6, "LS1 5HD") \
        + field_bytes(7, coding("https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategory", "A"))
    out = field_bytes(1, "process-message") + field_bytes(2, sender) \
        + field_bytes(3, field_bytes(1, "https://gp.example.nhs.uk/Id/referral") + field_bytes(2, "REF-2026-000123")) \
        + field_bytes(4, patient) \
        + field_bytes(5, field_bytes(1, "Dr Amrit Jones") + field_bytes(2, "A81001")) \
        + field_bytes(6, coding("http://snomed.info/sct", *reason)) \
        + field_bytes(7, coding("http://snomed.info/sct", *body_site)) \
        + field_bytes(8, priority)
    for flag in red_flags:
        out += field_bytes(9, flag)
    for answer in start_back or []:
        out += field_bool(10, answer)
    out += field_bytes(11, "Right knee pain for 3 months") + field_bytes(12, "2026-11-20T09:30:00+00:00")
    out += field_bytes(13, compact(message))
    return out


write("triage_input", "knee-routine.pb", referral())
write("triage_input", "back-start-back-high.pb", referral(
    start_back=[True] * 9, reason=("279039007", "Low back pain"), body_site=("37822005", "Lumbar region")))
write("triage_input", "back-start-back-low.pb", referral(
    start_back=[False] * 9, reason=("279039007", "Low back pain"), body_site=("37822005", "Lumbar region")))
write("triage_input", "urgent-under-16.pb", referral(priority="urgent", birth_date="2015-01-01"))
rules = (ROOT / "services/intake/rules/triage.toml").read_text()
# One seed per red-flag rule: the first code each `red_flag.any_of` lists.
codes = []
lines = rules.splitlines()
for i, line in enumerate(lines):
    if "red_flag.any_of" in line:
        text = " ".join(lines[i:i + 3])
        codes.append(text.split('"')[1])
for code in codes:
    write("triage_input", f"red-flag-{code}.pb", referral(red_flags=[code]))


# --- questionnaire_scorer: one response per measure ---
def response(measure, items):
    return compact({
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "meta": {"tag": [{"system": "https://fhir.mskflow.org/CodeSystem/prom-timepoint",
                          "code": "first-contact"}]},
        "questionnaire": f"https://fhir.mskflow.org/Questionnaire/{measure}",
        "basedOn": [{"reference": "ServiceRequest/6f1c2f7e-0b7a-4c55-9a43-3f1f0e1d2c01"}],
        "item": [{"linkId": k, "answer": [{"valueInteger": v}]} for k, v in items],
    })


write("questionnaire_scorer", "msk-hq.json", response("msk-hq", [(str(i), i % 5) for i in range(1, 15)]))
write("questionnaire_scorer", "start-back.json", response("start-back", [(str(i), 1) for i in range(1, 9)] + [("9", 5)]))
write("questionnaire_scorer", "eq-5d-5l.json", response("eq-5d-5l", [
    ("mobility", 1), ("self-care", 2), ("usual-activities", 3), ("pain-discomfort", 4),
    ("anxiety-depression", 5), ("vas", 70)]))
write("questionnaire_scorer", "psfs.json", response("psfs", [("activity-1", 4), ("activity-2", 7)]))
coded = json.loads(response("psfs", [("activity-1", 4)]))
coded["item"].append({"linkId": "activity-2", "answer": [{"valueCoding": {"code": "6"}}]})
write("questionnaire_scorer", "psfs-coded.json", compact(coded))
