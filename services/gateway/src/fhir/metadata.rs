//! `GET /metadata`: the CapabilityStatement, which states what the server
//! does and nothing more.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use crate::fhir::request::{base_url, fhir_ok};
use crate::state::State;
use crate::views::Resource;
use mskflow_events::NHS_NUMBER_SYSTEM;

pub(crate) async fn metadata(state: State, req: HttpRequest) -> HttpResponse {
    fhir_ok(
        StatusCode::OK,
        &capability_statement(
            &base_url(&state, &req),
            req.app_data::<web::Data<crate::auth::Authenticator>>()
                .and_then(|a| a.token_url()),
        ),
    )
}

/// The conditional interactions of a resource: only `ServiceRequest` create
/// honours `If-None-Exist`; nothing else is conditional.
pub(crate) fn unconditional(mut resource: Value) -> Value {
    resource["conditionalCreate"] = json!(false);
    resource["conditionalRead"] = json!("not-supported");
    resource["conditionalUpdate"] = json!(false);
    resource["conditionalDelete"] = json!("not-supported");
    resource
}

/// Search parameters as the CapabilityStatement lists them. A `patient` or
/// `subject` reference is searched through the NHS number only
/// (`patient:identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}`).
pub(crate) fn search_params(params: &[(&str, &str)]) -> Vec<Value> {
    params
        .iter()
        .map(|(name, kind)| {
            if matches!(*name, "patient" | "subject") {
                json!({"name": name, "type": kind, "documentation": format!("chained on the NHS number only: {name}:identifier={NHS_NUMBER_SYSTEM}|{{nhs number}}")})
            } else {
                json!({"name": name, "type": kind})
            }
        })
        .collect()
}

/// `_count` and `_offset`, for the searches that page.
pub(crate) fn paging() -> [Value; 2] {
    [
        json!({"name": "_count", "type": "number"}),
        json!({"name": "_offset", "type": "number"}),
    ]
}

pub(crate) fn resource_capability(resource: Resource, interactions: &[&str]) -> Value {
    let mut params = search_params(resource.parameters());
    params.extend(paging());
    unconditional(json!({
        "type": resource.name(),
        "versioning": "versioned",
        "readHistory": true,
        "updateCreate": false,
        "interaction": interactions.iter().map(|i| json!({"code": i})).collect::<Vec<_>>(),
        "searchParam": params,
    }))
}

/// What this server supports, and nothing more: every interaction, search
/// parameter, conditional interaction, format and operation listed is
/// served, and `tests/capability_statement.rs` exercises each one against
/// the routes. `token_url` is the authorisation server's token endpoint,
/// advertised with the SMART `oauth-uris` extension when configured.
pub fn capability_statement(base: &str, token_url: Option<&str>) -> Value {
    // Update is the referrer's cancellation only, with If-Match honoured;
    // create honours If-None-Exist (an identifier already recorded answers
    // the existing referral).
    let mut service_request = resource_capability(
        Resource::ServiceRequest,
        &[
            "read",
            "vread",
            "history-instance",
            "create",
            "update",
            "search-type",
        ],
    );
    service_request["versioning"] = json!("versioned-update");
    service_request["conditionalCreate"] = json!(true);
    let unversioned = |resource: Value| {
        let mut r = unconditional(resource);
        r["versioning"] = json!("no-version");
        r["readHistory"] = json!(false);
        r
    };
    let mut patient_params = search_params(crate::search::PATIENT_PARAMETERS);
    patient_params.extend(paging());
    let mut appointment_params = search_params(crate::search::APPOINTMENT_PARAMETERS);
    appointment_params.extend(paging());
    let mut slot = unversioned(json!({
        "type": "Slot",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": [
            {"name": "schedule", "type": "reference"},
            {"name": "status", "type": "token"},
            {"name": "start", "type": "date"},
            {"name": "_count", "type": "number"},
            {"name": "_offset", "type": "number"}
        ]
    }));
    slot["documentation"] =
        json!("no version reads; a 1:1 rehabilitation slot's meta.versionId is informational");
    let mut statement = json!({
        "resourceType": "CapabilityStatement",
        "id": "mskflow-gateway",
        "status": "active",
        "date": "2026-12-02",
        "publisher": "mskflow",
        "kind": "instance",
        "software": {"name": "mskflow", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "mskflow FHIR gateway", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "FHIR JSON only: requests are application/fhir+json (or application/json); answers are application/fhir+json, and an Accept or _format asking for anything else is refused with 406. Search parameters not listed are refused with 400 (not-supported).",
            "security": {
                "cors": false,
                "service": [{
                    "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                        "display": "SMART-on-FHIR"
                    }],
                    "text": "OAuth2 bearer tokens (JWT) with SMART system scopes, e.g. system/ServiceRequest.write, system/Task.read; claim 'ods' names the calling organisation"
                }],
                "description": "Every request except GET /metadata needs Authorization: Bearer <JWT>. 401 for a missing, invalid or expired token; 403 when its scopes do not cover the interaction. Referrers see only the referrals their organisation sent. Every access to patient data is recorded (AuditEvent)."
            },
            "resource": [
                service_request,
                resource_capability(Resource::Task, &["read", "vread", "history-instance", "search-type"]),
                unconditional(json!({
                    "type": "Patient",
                    "versioning": "versioned",
                    "readHistory": true,
                    "interaction": [{"code": "read"}, {"code": "vread"}, {"code": "history-instance"}, {"code": "search-type"}],
                    "searchParam": patient_params
                })),
                unversioned(json!({
                    "type": "Appointment",
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "searchParam": appointment_params
                })),
                unversioned(json!({
                    "type": "Schedule",
                    "documentation": "no version reads; a class schedule's meta.versionId is informational",
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "searchParam": [{"name": "_id", "type": "token"}]
                })),
                slot,
                unversioned(json!({
                    "type": "Questionnaire",
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "searchParam": []
                })),
                unversioned(json!({
                    "type": "QuestionnaireResponse",
                    "documentation": "create scores the response (outcomes service) and answers it with the score as extensions; an EQ-5D-5L index names its value set (https://fhir.mskflow.org/StructureDefinition/eq5d-value-set)",
                    "interaction": [{"code": "create"}],
                    "searchParam": []
                })),
                unversioned(json!({
                    "type": "Encounter",
                    "interaction": [{"code": "read"}],
                    "searchParam": []
                })),
                unversioned(json!({
                    "type": "MessageDefinition",
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "searchParam": []
                })),
                unconditional(json!({
                    "type": "Subscription",
                    "profile": crate::subscription::SUBSCRIPTION_PROFILE,
                    "documentation": format!("Topic-based subscriptions (Subscriptions R5 Backport for R4): topic {}, channel rest-hook to a registered referrer endpoint, payload application/fhir+json with payload content empty, id-only (default) or full-resource; limited to the referrals of the token's organisation", crate::subscription::TOPIC),
                    "versioning": "versioned",
                    "readHistory": false,
                    "interaction": [{"code": "read"}, {"code": "create"}, {"code": "delete"}, {"code": "search-type"}],
                    "searchParam": [{"name": "status", "type": "token"}]
                })),
                unversioned(json!({
                    "type": "AuditEvent",
                    "documentation": "the provider role only",
                    "interaction": [{"code": "search-type"}],
                    "searchParam": [
                        {"name": "date", "type": "date"},
                        {"name": "agent", "type": "token", "documentation": "the OAuth client id"},
                        {"name": "entity", "type": "reference"},
                        {"name": "_count", "type": "number"}
                    ]
                })),
            ],
            "operation": [{
                "name": "process-message",
                "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message"
            }]
        }]
    });
    if let Some(token) = token_url {
        statement["rest"][0]["security"]["extension"] = json!([{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "token", "valueUri": token}]
        }]);
    }
    statement
}
