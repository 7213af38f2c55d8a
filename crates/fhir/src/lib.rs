//! FHIR R4 referrals in, [`ReferralDetails`] or an `OperationOutcome` out.
//!
//! This is the only crate that links the FHIR models (`fhir-sdk`, R4B
//! models, which read the R4 JSON of the resources used here). Its API is
//! deliberately small and non-generic so the model code compiles once, here:
//!
//! - [`parse_process_message`]: a `Bundle` of type `message` posted to
//!   `$process-message` (NHS Booking and Referral Standard shape:
//!   `MessageHeader` first, then `ServiceRequest`, `Patient`, `Organization`,
//!   `Observation`s, `QuestionnaireResponse`, ...);
//! - [`parse_service_request`]: a plain `ServiceRequest` with its `Patient`
//!   (and red-flag `Observation`s, STarT Back `QuestionnaireResponse`)
//!   contained;
//! - [`operation_outcome`]: the R4 `OperationOutcome` for a list of
//!   [`Issue`]s.
//!
//! The models drop elements they do not know, so the referral keeps the body
//! exactly as received in [`ReferralDetails::fhir_json`].
//!
//! # Status rules
//!
//! Every problem found in one pass is reported, each as an [`Issue`] with a
//! FHIR issue type and, where it has one, a FHIRPath-like `expression`
//! (`Bundle.entry[2].resource.identifier[0].value`,
//! `ServiceRequest.contained[0].gender`). Structure problems stop the pass
//! at the end of the structure check (later checks would only repeat them);
//! each resource is read on its own, so one problem per resource is reported.
//! A refusal carries 400 when any issue calls for 400, else 422.
//!
//! **400 Bad Request**: the input is not a valid FHIR referral:
//! - body not UTF-8, malformed JSON, JSON that is not an object (`structure`);
//! - JSON that FHIR forbids although JSON allows it (`structure`): the same
//!   element twice in one object (JSON readers differ on which one wins, so
//!   the stored body and the parsed referral could disagree), a string or
//!   element name holding a control character other than tab, CR or LF;
//! - a resource `id` that is not a FHIR id (`[A-Za-z0-9\-\.]{1,64}`)
//!   (`value`), e.g. `../../etc/passwd`;
//! - a JSON array of more than 10,000 items anywhere (`too-costly`),
//!   refused while it is read;
//! - more than [`MAX_RESOURCES`] Bundle entries, contained resources or
//!   QuestionnaireResponse items (`too-costly`), refused before the models
//!   read them;
//! - wrong `resourceType` (`invalid`), a Bundle that is not of type
//!   `message` (`invalid`);
//! - what the models refuse: wrong JSON types (`structure`), codes outside a
//!   required FHIR value set such as a bad `priority` or `gender`
//!   (`code-invalid`), a missing mandatory element (`required`), with the
//!   element's path;
//! - missing required elements (`required`): no `MessageHeader` as the first
//!   entry, no `ServiceRequest` in the message, no `subject`, a `subject` that
//!   does not resolve to a `Patient` carried with the referral, no NHS number
//!   identifier, a red-flag `Observation` without a value.
//!
//! **422 Unprocessable Entity**: well-formed FHIR that breaks a business or
//! profile rule:
//! - an NHS number failing the modulus 11 check (`value`, at the identifier);
//! - an ODS code that is not one (`value`);
//! - an unknown code in this service's own code systems, e.g. a red flag
//!   (`code-invalid`);
//! - a message event other than `servicerequest-request` (`not-supported`);
//! - `ServiceRequest.status` other than `active` (`value`);
//! - an incomplete STarT Back questionnaire (`required`, naming each missing
//!   item) or a red flag whose value is not a boolean (`value`).
//!
//! At most [`MAX_ISSUES`] issues are listed; a last `too-costly` issue
//! counts the rest.
//!
//! Diagnostics never repeat patient-identifiable values (NHS number, names,
//! free text), so issues may be logged.
//!
//! # Mapping
//!
//! References are resolved as `#id` among the ServiceRequest's contained
//! resources, then against the message entries' `fullUrl`, then as
//! `Type/id` against the entries' type and id (or the end of their
//! `fullUrl`). The sending organisation is `MessageHeader.sender` (its ODS
//! identifier, or the referenced `Organization`'s, or a `PractitionerRole`'s
//! organisation), else the requester's. Red flags are all `Observation`s in
//! the message or contained in the ServiceRequest that are coded in
//! [`mskflow_events::RED_FLAG_SYSTEM`]: present when `valueBoolean` is true.
//! STarT Back answers come from the `QuestionnaireResponse` to
//! [`mskflow_events::START_BACK_QUESTIONNAIRE`], items `1`..`9`, each
//! `answer[0].valueBoolean`. A partial `birthDate` (year or year-month) is
//! kept only in the JSON; [`mskflow_events::intake::PatientDetails::birth_date`]
//! holds full dates.
//!
//! [`ReferralDetails`]: mskflow_events::intake::ReferralDetails
//! [`ReferralDetails::fhir_json`]: mskflow_events::intake::ReferralDetails::fhir_json

mod outcome;
mod referral;
mod response;
mod structure;

pub use outcome::{Error, FhirError, Issue, IssueType, Severity, operation_outcome};
pub use referral::{
    ETHNIC_CATEGORY_EXTENSION, MAX_ISSUES, MAX_RESOURCES, MESSAGE_EVENT_SYSTEMS, ParsedMessage,
    SERVICE_REQUEST_EVENT, parse_process_message, parse_service_request,
};
pub use response::{
    ParsedResponse, QUESTIONNAIRE_BASE, TIMEPOINT_SYSTEM, parse_questionnaire_response,
};
