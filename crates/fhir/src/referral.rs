//! From a referral's FHIR resources to [`ReferralDetails`].

use chrono::NaiveDate;
use fhir_sdk::Date;
use fhir_sdk::r4b::resources::{
    Bundle, MessageHeader, MessageHeaderEvent, Observation, ObservationValue, Organization,
    Patient, PractitionerRole, QuestionnaireResponse, QuestionnaireResponseItem,
    QuestionnaireResponseItemAnswerValue, Resource, ServiceRequest,
};
use fhir_sdk::r4b::types::{CodeableConcept, ExtensionValue, Identifier, Reference};
use mskflow_events::intake::{
    Coding, Identifier as EventIdentifier, PatientDetails, ReferralDetails, Requester, Sender,
    StartBackAnswers,
};
use mskflow_events::types::{ReceivedVia, RedFlag, RequestPriority, Sex};
use mskflow_events::{
    NHS_NUMBER_SYSTEM, NhsNumber, ODS_SYSTEM, OdsCode, RED_FLAG_SYSTEM, START_BACK_QUESTIONNAIRE,
};
use serde_json::{Map, Value};

use crate::outcome::{FhirError, Issue, IssueType};
use crate::structure::{read_resource, typed};

/// UK Core ethnic category extension.
pub const ETHNIC_CATEGORY_EXTENSION: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory";
/// The message event this service accepts.
pub const SERVICE_REQUEST_EVENT: &str = "servicerequest-request";
/// Message event code systems accepted for [`SERVICE_REQUEST_EVENT`] (the
/// generic NHS one and the Booking and Referral Standard's own).
pub const MESSAGE_EVENT_SYSTEMS: &[&str] = &[
    "https://fhir.nhs.uk/CodeSystem/message-event",
    "https://fhir.nhs.uk/CodeSystem/message-events-bars",
];

/// Most entries a referral message may carry, and most resources a
/// ServiceRequest may contain. A referral carries a few dozen; more is
/// refused before any resource is read (400 `too-costly`).
pub const MAX_RESOURCES: usize = 1000;
/// Most issues reported for one request; the rest are counted in a last
/// issue, so a refusal stays small whatever arrives.
pub const MAX_ISSUES: usize = 100;

/// A referral message received on `POST /fhir/$process-message`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedMessage {
    /// `MessageHeader.id`, else `Bundle.id`, else `Bundle.identifier.value`,
    /// else the header entry's `urn:uuid:` full URL.
    pub message_id: String,
    /// `MessageHeader.eventCoding.code`, e.g. `servicerequest-request`.
    pub event_code: String,
    /// `MessageHeader.reason.coding[0].code` (`new` / `update`).
    pub reason: Option<String>,
    /// `Bundle.meta.versionId`.
    pub bundle_version: Option<String>,
    /// `ServiceRequest.status` as sent: `active` for a new referral;
    /// `revoked` or `entered-in-error` cancel (only with reason `update`).
    pub service_request_status: String,
    pub referral: ReferralDetails,
}

/// Issues found so far, each with the status it calls for.
#[derive(Debug, Default)]
struct Issues(Vec<(u16, Issue)>);

impl Issues {
    /// 400: not valid FHIR, or a required element is missing.
    fn bad(&mut self, issue: Issue) {
        self.0.push((400, issue));
    }

    /// 422: a business or profile rule is broken.
    fn unprocessable(&mut self, issue: Issue) {
        self.0.push((422, issue));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// 400 if any issue calls for it, else 422; the first [`MAX_ISSUES`]
    /// issues are reported and the rest counted.
    fn into_error(self) -> FhirError {
        let status = if self.0.iter().any(|(s, _)| *s == 400) {
            400
        } else {
            422
        };
        let total = self.0.len();
        let mut issues: Vec<Issue> = self
            .0
            .into_iter()
            .take(MAX_ISSUES)
            .map(|(_, i)| i)
            .collect();
        if total > MAX_ISSUES {
            issues.push(Issue::error(
                IssueType::TooCostly,
                format!(
                    "{} further issues were found and are not listed",
                    total - MAX_ISSUES
                ),
            ));
        }
        FhirError { status, issues }
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, FhirError> {
        match value {
            Some(v) if self.is_empty() => Ok(v),
            Some(_) => Err(self.into_error()),
            None if self.is_empty() => Err(FhirError::bad_request(vec![Issue::error(
                IssueType::Processing,
                "the referral could not be read",
            )])),
            None => Err(self.into_error()),
        }
    }
}

/// A resource read into its model.
#[derive(Debug)]
enum Model {
    ServiceRequest(ServiceRequest),
    Patient(Patient),
    Organization(Organization),
    PractitionerRole(PractitionerRole),
    Observation(Observation),
    QuestionnaireResponse(QuestionnaireResponse),
    MessageHeader(MessageHeader),
    /// Any other resource type: checked against the models, not used.
    Other,
}

/// A resource of the referral, where it was found and how to refer to it.
#[derive(Debug)]
struct Node<'a> {
    /// Where it is, e.g. `Bundle.entry[2].resource`.
    expr: String,
    full_url: Option<&'a str>,
    resource_type: &'a str,
    id: Option<&'a str>,
    /// The resource as received (the models normalise some values).
    raw: &'a Map<String, Value>,
    model: Model,
    /// Resources contained in a ServiceRequest.
    contained: Vec<Node<'a>>,
}

/// The FHIR `id` type: `[A-Za-z0-9\-\.]{1,64}`.
fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Single-valued complex elements the mapping reads, by resource type.
fn single_elements(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "MessageHeader" => &["eventCoding", "sender", "source", "reason", "meta"],
        "ServiceRequest" => &["subject", "requester", "code", "meta"],
        "Observation" => &["code", "subject", "valueCodeableConcept", "meta"],
        "QuestionnaireResponse" => &["subject", "meta"],
        "PractitionerRole" => &["organization", "practitioner", "meta"],
        _ => &["meta"],
    }
}

/// Refusal of a list longer than [`MAX_RESOURCES`].
fn too_many(len: usize, what: &str, at: String) -> Issue {
    Issue::error(
        IssueType::TooCostly,
        format!("{len} {what}: a referral carries at most {MAX_RESOURCES}"),
    )
    .at(at)
}

/// Read one resource. Structure problems are recorded and give `None`.
fn parse_node<'a>(
    raw: &'a Value,
    expr: String,
    full_url: Option<&'a str>,
    issues: &mut Issues,
) -> Option<Node<'a>> {
    let Some(object) = raw.as_object() else {
        issues.bad(Issue::error(IssueType::Structure, "a resource must be a JSON object").at(expr));
        return None;
    };
    let Some(resource_type) = object.get("resourceType").and_then(Value::as_str) else {
        issues.bad(
            Issue::error(
                IssueType::Required,
                "resourceType is missing or not a string",
            )
            .at(format!("{expr}.resourceType")),
        );
        return None;
    };
    // The models take an array where a single complex element belongs (the
    // items in order); FHIR does not, and neither do we for the elements the
    // mapping reads.
    if let Some(name) = single_elements(resource_type)
        .iter()
        .find(|name| object.get(**name).is_some_and(Value::is_array))
    {
        issues.bad(
            Issue::error(
                IssueType::Structure,
                format!("'{name}' is a single element, not an array"),
            )
            .at(format!("{expr}.{name}")),
        );
        return None;
    }
    let id = object.get("id").and_then(Value::as_str);
    if let Some(id) = id
        && !is_fhir_id(id)
    {
        issues.bad(
            Issue::error(
                IssueType::Value,
                "a resource id is 1 to 64 letters, digits, '-' or '.' (FHIR id)",
            )
            .at(format!("{expr}.id")),
        );
        return None;
    }
    let mut contained = Vec::new();
    let result = match resource_type {
        "ServiceRequest" => {
            // Contained resources are read one by one, so each problem is
            // reported with its own path.
            let mut own = object.clone();
            own.remove("contained");
            if let Some(inner) = object.get("contained") {
                match inner.as_array() {
                    Some(list) if list.len() > MAX_RESOURCES => issues.bad(too_many(
                        list.len(),
                        "contained resources",
                        format!("{expr}.contained"),
                    )),
                    Some(list) => {
                        for (i, c) in list.iter().enumerate() {
                            if let Some(node) =
                                parse_node(c, format!("{expr}.contained[{i}]"), None, issues)
                            {
                                contained.push(node);
                            }
                        }
                    }
                    None => issues.bad(
                        Issue::error(IssueType::Structure, "contained must be an array")
                            .at(format!("{expr}.contained")),
                    ),
                }
            }
            typed(&Value::Object(own), &expr).map(Model::ServiceRequest)
        }
        "Patient" => typed(raw, &expr).map(Model::Patient),
        "Organization" => typed(raw, &expr).map(Model::Organization),
        "PractitionerRole" => typed(raw, &expr).map(Model::PractitionerRole),
        "Observation" => typed(raw, &expr).map(Model::Observation),
        "QuestionnaireResponse" => typed(raw, &expr).map(Model::QuestionnaireResponse),
        "MessageHeader" => typed(raw, &expr).map(Model::MessageHeader),
        _ => typed::<Resource>(raw, &expr).map(|_| Model::Other),
    };
    match result {
        Ok(model) => Some(Node {
            expr,
            full_url,
            resource_type,
            id,
            raw: object,
            model,
            contained,
        }),
        Err(issue) => {
            issues.bad(*issue);
            None
        }
    }
}

/// Resolves references: `#id` among a ServiceRequest's contained resources,
/// anything else against the message's entries (full URL, then
/// `Type/id` against the resource or the end of the full URL).
#[derive(Debug, Clone, Copy)]
struct Resolver<'n, 'a> {
    entries: &'n [Node<'a>],
    contained: &'n [Node<'a>],
}

impl<'n, 'a> Resolver<'n, 'a> {
    fn resolve(&self, reference: &str) -> Option<&'n Node<'a>> {
        if let Some(local) = reference.strip_prefix('#') {
            return self.contained.iter().find(|n| n.id == Some(local));
        }
        if let Some(n) = self.entries.iter().find(|n| n.full_url == Some(reference)) {
            return Some(n);
        }
        let base = reference.split("/_history/").next().unwrap_or(reference);
        let mut parts = base.rsplit('/');
        let id = parts.next()?;
        let ty = parts.next()?;
        let tail = format!("{ty}/{id}");
        self.entries
            .iter()
            .find(|n| n.resource_type == ty && n.id == Some(id))
            .or_else(|| {
                self.entries.iter().find(|n| {
                    n.full_url
                        .is_some_and(|u| u == tail || u.ends_with(&format!("/{tail}")))
                })
            })
    }

    fn resolve_ref(&self, reference: &Reference) -> Option<&'n Node<'a>> {
        reference.reference.as_deref().and_then(|r| self.resolve(r))
    }
}

/// The ODS code an organisation reference leads to (directly by
/// identifier, via an Organization, or via a PractitionerRole's
/// organisation), with where it was found.
fn organisation_ods(
    reference: &Reference,
    at: &str,
    resolver: Resolver<'_, '_>,
    depth: u8,
) -> Option<(String, String)> {
    if let Some(ident) = &reference.identifier
        && ident.system.as_deref() == Some(ODS_SYSTEM)
        && let Some(value) = &ident.value
    {
        return Some((value.clone(), format!("{at}.identifier.value")));
    }
    let node = resolver.resolve_ref(reference)?;
    match &node.model {
        Model::Organization(org) => ods_identifier(&org.identifier, &node.expr),
        Model::PractitionerRole(role) if depth > 0 => {
            let org = role.organization.as_ref()?;
            organisation_ods(
                org,
                &format!("{}.organization", node.expr),
                resolver,
                depth - 1,
            )
        }
        _ => None,
    }
}

fn ods_identifier(identifiers: &[Option<Identifier>], at: &str) -> Option<(String, String)> {
    identifiers.iter().enumerate().find_map(|(i, ident)| {
        let ident = ident.as_ref()?;
        (ident.system.as_deref() == Some(ODS_SYSTEM))
            .then(|| ident.value.clone())
            .flatten()
            .map(|v| (v, format!("{at}.identifier[{i}].value")))
    })
}

fn parse_ods(found: Option<(String, String)>, issues: &mut Issues) -> Option<OdsCode> {
    let (value, at) = found?;
    match OdsCode::parse(&value) {
        Ok(code) => Some(code),
        Err(e) => {
            issues.unprocessable(Issue::error(IssueType::Value, e.to_string()).at(at));
            None
        }
    }
}

fn codings(concepts: &[Option<CodeableConcept>]) -> Vec<Coding> {
    concepts
        .iter()
        .flatten()
        .flat_map(|cc| cc.coding.iter().flatten())
        .filter_map(|c| {
            Some(Coding {
                system: c.system.clone(),
                code: c.code.clone()?,
                display: c.display.clone(),
            })
        })
        .collect()
}

fn full_date(date: &Date) -> Option<NaiveDate> {
    match date {
        Date::Date(d) => {
            NaiveDate::from_ymd_opt(d.year(), u32::from(u8::from(d.month())), u32::from(d.day()))
        }
        Date::Year(_) | Date::YearMonth(..) => None,
    }
}

fn patient_details(node: &Node<'_>, patient: &Patient, issues: &mut Issues) -> Option<NhsNumber> {
    let nhs = patient
        .identifier
        .iter()
        .enumerate()
        .find_map(|(i, ident)| {
            let ident = ident.as_ref()?;
            (ident.system.as_deref() == Some(NHS_NUMBER_SYSTEM)).then_some((i, ident))
        });
    let Some((i, ident)) = nhs else {
        // An NHS number under a mistyped or retired system URI (`http:`,
        // `fhir.nhs.net`) is pointed at, rather than reported as missing.
        let near_miss = patient
            .identifier
            .iter()
            .enumerate()
            .find_map(|(i, ident)| {
                let system = ident.as_ref()?.system.as_deref()?;
                system
                    .trim_end_matches('/')
                    .to_ascii_lowercase()
                    .ends_with("/nhs-number")
                    .then_some((i, system))
            });
        match near_miss {
            Some((i, system)) => issues.unprocessable(
                Issue::error(
                    IssueType::Value,
                    format!(
                        "an NHS number identifier must have system {NHS_NUMBER_SYSTEM}, not '{}'",
                        system.chars().take(64).collect::<String>()
                    ),
                )
                .at(format!("{}.identifier[{i}].system", node.expr)),
            ),
            None => issues.bad(
                Issue::error(
                    IssueType::Required,
                    format!(
                        "the Patient has no NHS number (an identifier with system {NHS_NUMBER_SYSTEM})"
                    ),
                )
                .at(format!("{}.identifier", node.expr)),
            ),
        }
        return None;
    };
    let Some(value) = ident.value.as_deref() else {
        issues.bad(
            Issue::error(
                IssueType::Required,
                "the NHS number identifier has no value",
            )
            .at(format!("{}.identifier[{i}].value", node.expr)),
        );
        return None;
    };
    match NhsNumber::parse(value) {
        Ok(n) => Some(n),
        Err(e) => {
            issues.unprocessable(
                Issue::error(IssueType::Value, e.to_string())
                    .at(format!("{}.identifier[{i}].value", node.expr)),
            );
            None
        }
    }
}

fn patient(node: &Node<'_>, patient: &Patient, issues: &mut Issues) -> Option<PatientDetails> {
    let nhs_number = patient_details(node, patient, issues);
    let name = patient.name.iter().flatten().next();
    let sex = match patient.gender {
        Some(g) => match Sex::parse(g.as_ref()) {
            Ok(s) => Some(s),
            Err(e) => {
                issues.unprocessable(
                    Issue::error(IssueType::CodeInvalid, e.to_string())
                        .at(format!("{}.gender", node.expr)),
                );
                None
            }
        },
        None => None,
    };
    let ethnicity = patient
        .extension
        .iter()
        .filter(|e| e.url == ETHNIC_CATEGORY_EXTENSION)
        .find_map(|e| match &e.value {
            Some(ExtensionValue::CodeableConcept(cc)) => {
                codings(&[Some(cc.clone())]).into_iter().next()
            }
            _ => None,
        });
    Some(PatientDetails {
        nhs_number: Some(nhs_number?),
        family: name.and_then(|n| n.family.clone()),
        given: name
            .map(|n| n.given.iter().flatten().cloned().collect())
            .unwrap_or_default(),
        birth_date: patient.birth_date.as_ref().and_then(full_date),
        sex,
        postcode: patient
            .address
            .iter()
            .flatten()
            .next()
            .and_then(|a| a.postal_code.clone()),
        ethnicity,
    })
}

/// Red flags recorded as `Observation`s coded in [`RED_FLAG_SYSTEM`].
fn red_flags<'n, 'a: 'n>(
    nodes: impl Iterator<Item = &'n Node<'a>>,
    issues: &mut Issues,
) -> Vec<RedFlag> {
    let mut flags = Vec::new();
    for node in nodes {
        let Model::Observation(obs) = &node.model else {
            continue;
        };
        if matches!(obs.status.as_ref(), "entered-in-error" | "cancelled") {
            continue;
        }
        let Some((j, coding)) = obs.code.coding.iter().enumerate().find_map(|(j, c)| {
            c.as_ref()
                .filter(|c| c.system.as_deref() == Some(RED_FLAG_SYSTEM))
                .map(|c| (j, c))
        }) else {
            continue;
        };
        let at = format!("{}.code.coding[{j}].code", node.expr);
        let Some(code) = coding.code.as_deref() else {
            issues.bad(Issue::error(IssueType::Required, "the red-flag coding has no code").at(at));
            continue;
        };
        let flag = match RedFlag::parse(code) {
            Ok(flag) => flag,
            Err(_) => {
                issues.unprocessable(
                    Issue::error(
                        IssueType::CodeInvalid,
                        format!(
                            "'{}' is not a code of {RED_FLAG_SYSTEM}",
                            code.chars().take(64).collect::<String>()
                        ),
                    )
                    .at(at),
                );
                continue;
            }
        };
        match &obs.value {
            Some(ObservationValue::Boolean(true)) => {
                if !flags.contains(&flag) {
                    flags.push(flag);
                }
            }
            Some(ObservationValue::Boolean(false)) => {}
            None => issues.bad(
                Issue::error(
                    IssueType::Required,
                    format!("the red-flag Observation '{flag}' has no valueBoolean (true = present, false = absent)"),
                )
                .at(format!("{}.valueBoolean", node.expr)),
            ),
            Some(_) => issues.unprocessable(
                Issue::error(
                    IssueType::Value,
                    format!("the red-flag Observation '{flag}' must carry valueBoolean"),
                )
                .at(format!("{}.value", node.expr)),
            ),
        }
    }
    flags
}

fn find_item<'q>(
    items: &'q [Option<QuestionnaireResponseItem>],
    link_id: &str,
) -> Option<&'q QuestionnaireResponseItem> {
    items.iter().flatten().find_map(|item| {
        if item.link_id == link_id {
            Some(item)
        } else {
            find_item(&item.item, link_id)
        }
    })
}

/// STarT Back answers from the first QuestionnaireResponse to
/// [`START_BACK_QUESTIONNAIRE`].
fn start_back<'n, 'a: 'n>(
    nodes: impl Iterator<Item = &'n Node<'a>>,
    issues: &mut Issues,
) -> Option<StartBackAnswers> {
    let (node, qr) = nodes.into_iter().find_map(|node| match &node.model {
        Model::QuestionnaireResponse(qr)
            if qr.status.as_ref() != "entered-in-error"
                && qr.questionnaire.as_deref().is_some_and(|q| {
                    q == START_BACK_QUESTIONNAIRE
                        || q.strip_prefix(START_BACK_QUESTIONNAIRE)
                            .is_some_and(|v| v.starts_with('|'))
                }) =>
        {
            Some((node, qr))
        }
        _ => None,
    })?;
    let mut answers = [false; 9];
    let mut complete = true;
    for (n, answer) in answers.iter_mut().enumerate() {
        let link_id = (n + 1).to_string();
        let value = find_item(&qr.item, &link_id)
            .and_then(|item| item.answer.iter().flatten().next())
            .and_then(|a| a.value.as_ref());
        match value {
            Some(QuestionnaireResponseItemAnswerValue::Boolean(b)) => *answer = *b,
            _ => {
                complete = false;
                issues.unprocessable(
                    Issue::error(
                        IssueType::Required,
                        format!("STarT Back item {link_id} has no yes/no answer (answer[0].valueBoolean); all 9 items are required"),
                    )
                    .at(format!("{}.item.where(linkId='{link_id}')", node.expr)),
                );
            }
        }
    }
    complete.then_some(StartBackAnswers(answers))
}

/// How the ServiceRequest arrived.
struct Arrival<'b> {
    via: ReceivedVia,
    sender: Sender,
    body: &'b str,
    /// A `reason = update` message may cancel: status `revoked` or
    /// `entered-in-error` is then allowed as well as `active`.
    may_cancel: bool,
}

/// Map a ServiceRequest (and what it refers to) onto [`ReferralDetails`].
fn referral<'n, 'a: 'n>(
    node: &'n Node<'a>,
    sr: &ServiceRequest,
    entries: &'n [Node<'a>],
    arrival: Arrival<'_>,
    issues: &mut Issues,
) -> Option<ReferralDetails> {
    let resolver = Resolver {
        entries,
        contained: &node.contained,
    };
    let expr = &node.expr;

    let status = sr.status.as_ref();
    let cancelling = arrival.may_cancel && matches!(status, "revoked" | "entered-in-error");
    if status != "active" && !cancelling {
        issues.unprocessable(
            Issue::error(
                IssueType::Value,
                if arrival.may_cancel {
                    format!("an update must have status 'revoked' or 'entered-in-error' (to cancel) or 'active', not '{status}'")
                } else {
                    format!("a referral must have status 'active', not '{status}'")
                },
            )
            .at(format!("{expr}.status")),
        );
    }

    let patient = match sr.subject.reference.as_deref() {
        None => {
            issues.bad(
                Issue::error(
                    IssueType::Required,
                    "subject must reference the Patient (subject.reference)",
                )
                .at(format!("{expr}.subject")),
            );
            None
        }
        Some(reference) => match resolver.resolve(reference) {
            Some(
                p @ Node {
                    model: Model::Patient(patient_model),
                    ..
                },
            ) => patient(p, patient_model, issues),
            Some(other) => {
                issues.bad(
                    Issue::error(
                        IssueType::Required,
                        format!(
                            "subject must reference a Patient, not a {}",
                            other.resource_type
                        ),
                    )
                    .at(format!("{expr}.subject")),
                );
                None
            }
            None => {
                issues.bad(
                    Issue::error(
                        IssueType::Required,
                        "subject does not resolve to a Patient carried with the referral (contained, or an entry of the message)",
                    )
                    .at(format!("{expr}.subject")),
                );
                None
            }
        },
    };

    let requester = sr.requester.as_ref().map(|r| {
        let display = r.display.clone().or_else(|| {
            resolver.resolve_ref(r).and_then(|n| match &n.model {
                Model::Organization(o) => o.name.clone(),
                _ => None,
            })
        });
        let ods = parse_ods(
            organisation_ods(r, &format!("{expr}.requester"), resolver, 1),
            issues,
        );
        Requester {
            display,
            ods_code: ods,
        }
    });

    let mut sender = arrival.sender;
    if sender.ods_code.is_none() {
        sender.ods_code = requester.as_ref().and_then(|r| r.ods_code.clone());
    }

    let requested_priority = match sr.priority {
        Some(p) => match RequestPriority::parse(p.as_ref()) {
            Ok(p) => p,
            Err(e) => {
                issues.unprocessable(
                    Issue::error(IssueType::CodeInvalid, e.to_string())
                        .at(format!("{expr}.priority")),
                );
                RequestPriority::Routine
            }
        },
        None => RequestPriority::Routine,
    };

    let related = || entries.iter().chain(node.contained.iter());
    let red_flags = red_flags(related(), issues);
    let start_back = start_back(related(), issues);

    // As sent: the model normalises time zones (`+00:00` becomes `Z`).
    let authored_on = sr
        .authored_on
        .as_ref()
        .and(node.raw.get("authoredOn"))
        .and_then(Value::as_str)
        .map(str::to_owned);

    Some(ReferralDetails {
        received_via: arrival.via,
        sender,
        service_request_identifier: sr.identifier.iter().flatten().next().and_then(|i| {
            Some(EventIdentifier {
                system: i.system.clone(),
                value: i.value.clone()?,
            })
        }),
        patient: patient?,
        requester,
        reason: codings(&sr.reason_code),
        body_site: codings(&sr.body_site),
        requested_priority,
        red_flags,
        start_back,
        note: sr.note.iter().flatten().next().map(|n| n.text.clone()),
        authored_on,
        fhir_json: arrival.body.to_owned(),
    })
}

/// Parse a plain ServiceRequest (`POST /fhir/ServiceRequest`).
pub fn parse_service_request(body: &[u8]) -> Result<ReferralDetails, FhirError> {
    let (text, object) = read_resource(body, "ServiceRequest")?;
    let raw = Value::Object(object);
    let mut issues = Issues::default();
    let node = parse_node(&raw, "ServiceRequest".to_owned(), None, &mut issues);
    if !issues.is_empty() {
        return Err(issues.into_error());
    }
    let result = node.as_ref().and_then(|node| match &node.model {
        Model::ServiceRequest(sr) => referral(
            node,
            sr,
            &[],
            Arrival {
                may_cancel: false,
                via: ReceivedVia::ServiceRequestCreate,
                sender: Sender {
                    ods_code: None,
                    endpoint: None,
                    message_id: None,
                    software: None,
                },
                body: text,
            },
            &mut issues,
        ),
        _ => None,
    });
    issues.finish(result)
}

/// The Bundle with its entries' resources taken out (they are read one by
/// one, so that each problem is reported with its own path).
fn envelope(object: &Map<String, Value>) -> Value {
    let mut env = object.clone();
    if let Some(Value::Array(entries)) = env.get_mut("entry") {
        for e in entries.iter_mut() {
            if let Value::Object(e) = e {
                e.remove("resource");
            }
        }
    }
    Value::Object(env)
}

/// Parse a referral message (`POST /fhir/$process-message`).
pub fn parse_process_message(body: &[u8]) -> Result<ParsedMessage, FhirError> {
    let (text, object) = read_resource(body, "Bundle")?;
    let mut issues = Issues::default();

    // Counted before the models read anything.
    let empty = Vec::new();
    let raw_entries = object
        .get("entry")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    if raw_entries.len() > MAX_RESOURCES {
        return Err(FhirError::bad_request(vec![too_many(
            raw_entries.len(),
            "entries",
            "Bundle.entry".to_owned(),
        )]));
    }
    let bundle: Option<Bundle> = match typed(&envelope(&object), "Bundle") {
        Ok(b) => Some(b),
        Err(issue) => {
            issues.bad(*issue);
            None
        }
    };
    let mut nodes: Vec<Node<'_>> = Vec::new();
    // Where in `nodes` the resource of `entry[0]` is, if it was read.
    let mut first_entry: Option<usize> = None;
    for (i, entry) in raw_entries.iter().enumerate() {
        let Some(resource) = entry.get("resource") else {
            continue;
        };
        let full_url = entry.get("fullUrl").and_then(Value::as_str);
        if let Some(node) = parse_node(
            resource,
            format!("Bundle.entry[{i}].resource"),
            full_url,
            &mut issues,
        ) {
            if i == 0 {
                first_entry = Some(nodes.len());
            }
            nodes.push(node);
        }
    }
    if !issues.is_empty() {
        return Err(issues.into_error());
    }
    let Some(bundle) = bundle else {
        return issues.finish(None);
    };

    if bundle.r#type.as_ref() != "message" {
        issues.bad(
            Issue::error(
                IssueType::Invalid,
                format!(
                    "$process-message takes a Bundle of type 'message', not '{}'",
                    bundle.r#type.as_ref()
                ),
            )
            .at("Bundle.type"),
        );
    }

    let header = first_entry.and_then(|i| match &nodes[i].model {
        Model::MessageHeader(h) => Some((&nodes[i], h)),
        _ => None,
    });
    let Some((header_node, header)) = header else {
        issues.bad(
            Issue::error(
                IssueType::Required,
                "the first entry of a message must be its MessageHeader",
            )
            .at("Bundle.entry[0].resource"),
        );
        return issues.finish(None);
    };
    let hx = &header_node.expr;

    let event_code = match &header.event {
        MessageHeaderEvent::Coding(c) => {
            let code = c.code.clone().unwrap_or_default();
            let system_ok = c
                .system
                .as_deref()
                .is_none_or(|s| MESSAGE_EVENT_SYSTEMS.contains(&s));
            if code != SERVICE_REQUEST_EVENT || !system_ok {
                issues.unprocessable(
                    Issue::error(
                        IssueType::NotSupported,
                        format!(
                            "message event '{}' is not supported; this service accepts '{SERVICE_REQUEST_EVENT}' ({})",
                            code.chars().take(64).collect::<String>(),
                            MESSAGE_EVENT_SYSTEMS[0]
                        ),
                    )
                    .at(format!("{hx}.eventCoding")),
                );
            }
            code
        }
        MessageHeaderEvent::Uri(_) => {
            issues.unprocessable(
                Issue::error(
                    IssueType::NotSupported,
                    format!("eventUri is not supported; use eventCoding '{SERVICE_REQUEST_EVENT}'"),
                )
                .at(format!("{hx}.eventUri")),
            );
            String::new()
        }
    };

    let message_id = header
        .id
        .clone()
        .or_else(|| bundle.id.clone())
        .or_else(|| bundle.identifier.as_ref().and_then(|i| i.value.clone()))
        .or_else(|| {
            header_node
                .full_url
                .and_then(|u| u.strip_prefix("urn:uuid:"))
                .map(str::to_owned)
        });
    if message_id.is_none() {
        issues.bad(
            Issue::error(
                IssueType::Required,
                "the message has no id (MessageHeader.id, Bundle.id or Bundle.identifier)",
            )
            .at(format!("{hx}.id")),
        );
    }

    let resolver = Resolver {
        entries: &nodes,
        contained: &[],
    };
    let is_sr = |n: &&Node<'_>| matches!(n.model, Model::ServiceRequest(_));
    let focus: Vec<&Reference> = header.focus.iter().flatten().collect();
    let sr_node = if focus.is_empty() {
        nodes.iter().find(is_sr)
    } else {
        focus
            .iter()
            .filter_map(|r| resolver.resolve_ref(r))
            .find(is_sr)
    };
    if sr_node.is_none() {
        issues.bad(
            Issue::error(
                IssueType::Required,
                "the message carries no ServiceRequest (MessageHeader.focus must reference one of its entries)",
            )
            .at(format!("{hx}.focus")),
        );
    }

    let sender_ods = header.sender.as_ref().and_then(|s| {
        parse_ods(
            organisation_ods(s, &format!("{hx}.sender"), resolver, 1),
            &mut issues,
        )
    });
    let sender = Sender {
        ods_code: sender_ods,
        endpoint: Some(header.source.endpoint.clone()),
        message_id: message_id.clone(),
        software: header.source.software.clone(),
    };

    let reason = header
        .reason
        .as_ref()
        .and_then(|r| r.coding.iter().flatten().next())
        .and_then(|c| c.code.clone());
    let service_request_status = sr_node
        .and_then(|node| match &node.model {
            Model::ServiceRequest(sr) => Some(sr.status.as_ref().to_owned()),
            _ => None,
        })
        .unwrap_or_default();
    let referral = sr_node.and_then(|node| match &node.model {
        Model::ServiceRequest(sr) => referral(
            node,
            sr,
            &nodes,
            Arrival {
                may_cancel: reason.as_deref() == Some("update"),
                via: ReceivedVia::ProcessMessage,
                sender,
                body: text,
            },
            &mut issues,
        ),
        _ => None,
    });

    let parsed = match (referral, message_id) {
        (Some(referral), Some(message_id)) => Some(ParsedMessage {
            message_id,
            event_code,
            reason,
            service_request_status,
            bundle_version: bundle.meta.as_ref().and_then(|m| m.version_id.clone()),
            referral,
        }),
        _ => None,
    };
    issues.finish(parsed)
}
