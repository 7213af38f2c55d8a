//! The referral readers on arbitrary bytes: `$process-message` Bundles and
//! plain ServiceRequests. Whatever arrives, the answer is a referral or a
//! 400/422 refusal that is a small, valid OperationOutcome; never a panic.
//! A referral that is read keeps the body exactly as sent and crosses the
//! gRPC contract to intake unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mskflow_events::intake::ReferralDetails;
use mskflow_fhir::{FhirError, MAX_ISSUES, parse_process_message, parse_service_request};
use mskflow_proto::intake::v1 as pb;

fn check_refusal(e: &FhirError) {
    assert!(e.status == 400 || e.status == 422, "status {}", e.status);
    assert!(!e.issues.is_empty(), "a refusal without issues");
    assert!(
        e.issues.len() <= MAX_ISSUES + 1,
        "{} issues",
        e.issues.len()
    );
    assert_eq!(e.operation_outcome()["resourceType"], "OperationOutcome");
}

fn check_referral(data: &[u8], details: &ReferralDetails) {
    assert_eq!(
        details.fhir_json.as_bytes(),
        data,
        "the body is not kept as sent"
    );
    match ReferralDetails::try_from(pb::Referral::from(details.clone())) {
        Ok(back) => assert_eq!(&back, details, "changed crossing the gRPC contract"),
        Err(e) => panic!("a referral the gateway read is refused by intake: {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    match parse_process_message(data) {
        Ok(m) => check_referral(data, &m.referral),
        Err(e) => check_refusal(&e),
    }
    match parse_service_request(data) {
        Ok(details) => check_referral(data, &details),
        Err(e) => check_refusal(&e),
    }
});
