//! The gRPC service over a real socket, with the real SQLite store.

mod common;

use std::net::SocketAddr;

use common::{TestResult, as_log, open_store, referral};
use mskflow_eventlog_sqlite::SqliteEventLog;
use mskflow_intake::{Options, Service};
use mskflow_proto::intake::v1 as pb;
use mskflow_proto::intake::v1::intake_service_client::IntakeServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

/// A running intake service on port 0 with a fresh store.
struct App {
    addr: SocketAddr,
    store: SqliteEventLog,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), mskflow_intake::Error>>,
    _dir: tempfile::TempDir,
}

impl App {
    async fn client(&self) -> Result<IntakeServiceClient<Channel>, tonic::transport::Error> {
        IntakeServiceClient::connect(format!("http://{}", self.addr)).await
    }

    async fn stop(mut self) -> TestResult {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.await??;
        self.store.close().await;
        Ok(())
    }
}

async fn spawn_app() -> Result<App, Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let service = Service::build(
        Options {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            rules_path: None,
            projections: mskflow_projection::Options::in_dir(dir.path().join("projections")),
        },
        as_log(&store),
    )
    .await?;
    let addr = service.local_addr();
    assert_ne!(addr.port(), 0);
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(service.run(async {
        let _ = rx.await;
    }));
    Ok(App {
        addr,
        store,
        shutdown: Some(tx),
        server,
        _dir: dir,
    })
}

fn submit_request(
    request_id: Uuid,
    referral: pb::Referral,
) -> tonic::Request<pb::SubmitReferralRequest> {
    let mut req = tonic::Request::new(pb::SubmitReferralRequest {
        request_id: request_id.to_string(),
        correlation_id: Uuid::new_v4().to_string(),
        referral: Some(referral),
    });
    if let Ok(v) = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse() {
        req.metadata_mut().insert("traceparent", v);
    }
    req
}

#[tokio::test]
async fn submit_then_get() -> TestResult {
    let app = spawn_app().await?;
    let mut client = app.client().await?;
    let response = client
        .submit_referral(submit_request(Uuid::new_v4(), referral("G-1")?.into()))
        .await?
        .into_inner();
    assert_eq!(response.version, 2);
    let state = response.state.ok_or("no state")?;
    assert_eq!(state.status, "triaged");
    assert_eq!(state.pathway.as_deref(), Some("knee"));
    assert_eq!(state.priority.as_deref(), Some("routine"));
    assert_eq!(state.rule_set_version, "2026.1");
    assert_eq!(state.referral_id, response.referral_id);

    let got = client
        .get_referral(pb::GetReferralRequest {
            referral_id: response.referral_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(got, state);

    // The trace context travelled into the stored events.
    let referral_id: Uuid = response.referral_id.parse()?;
    let events = mskflow_eventlog::EventLog::read_stream(
        &app.store,
        &mskflow_intake::service::stream_id(referral_id),
        1,
    )
    .await?;
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.traceparent.as_deref()
        == Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")));
    app.stop().await
}

#[tokio::test]
async fn an_under_16_referral_is_ok_with_status_rejected() -> TestResult {
    let app = spawn_app().await?;
    let mut client = app.client().await?;
    let mut details = referral("G-CHILD")?;
    details.patient.birth_date = chrono::Utc::now()
        .date_naive()
        .checked_sub_months(chrono::Months::new(12 * 10));
    let state = client
        .submit_referral(submit_request(Uuid::new_v4(), details.into()))
        .await?
        .into_inner()
        .state
        .ok_or("no state")?;
    assert_eq!(state.status, "rejected");
    assert_eq!(state.rule_id, "under-16");
    assert!(state.reason.is_some());
    app.stop().await
}

/// Submit a clinical referral carrying `nhs_number` as sent; it must be
/// refused as INVALID_ARGUMENT. Returns the field violations.
async fn refused_with_nhs_number(
    client: &mut IntakeServiceClient<Channel>,
    key: &str,
    nhs_number: &str,
) -> Result<Vec<mskflow_proto::convert::FieldViolation>, Box<dyn std::error::Error + Send + Sync>> {
    let mut referral: pb::Referral = referral(key)?.into();
    if let Some(p) = referral.patient.as_mut() {
        p.nhs_number = nhs_number.to_owned();
    }
    let status = match client
        .submit_referral(submit_request(Uuid::new_v4(), referral))
        .await
    {
        Ok(r) => return Err(format!("accepted: {r:?}").into()),
        Err(s) => s,
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    Ok(mskflow_proto::convert::violations(&status))
}

#[tokio::test]
async fn an_invalid_nhs_number_is_invalid_argument_on_patient_identifier() -> TestResult {
    let app = spawn_app().await?;
    let mut client = app.client().await?;
    let violations = refused_with_nhs_number(&mut client, "G-BAD", "9434765918").await?;
    assert!(
        violations.iter().any(|v| v.field == "Patient.identifier"),
        "{violations:?}"
    );
    app.stop().await
}

#[tokio::test]
async fn only_a_self_referral_may_come_without_an_nhs_number() -> TestResult {
    let app = spawn_app().await?;
    let mut client = app.client().await?;
    let violations = refused_with_nhs_number(&mut client, "G-NONE", "").await?;
    assert!(
        violations
            .iter()
            .any(|v| v.field == "Patient.identifier" && v.description.contains("required")),
        "{violations:?}"
    );

    let mut details = referral("SELF-NONE")?;
    details.received_via = mskflow_events::types::ReceivedVia::SelfReferral;
    details.patient.nhs_number = None;
    let response = client
        .submit_referral(submit_request(Uuid::new_v4(), details.into()))
        .await?
        .into_inner();
    let state = response.state.ok_or("no state")?;
    assert_eq!(state.status, "triaged", "{state:?}");
    let referral_id: Uuid = response.referral_id.parse()?;
    let events = mskflow_eventlog::EventLog::read_stream(
        &app.store,
        &mskflow_intake::service::stream_id(referral_id),
        1,
    )
    .await?;
    // Stored without the field, not with a made-up or empty number.
    assert!(!events[0].payload.to_string().contains("nhs_number"));
    app.stop().await
}

#[tokio::test]
async fn a_request_id_that_is_not_a_uuid_is_invalid_argument() -> TestResult {
    let app = spawn_app().await?;
    let mut client = app.client().await?;
    let mut req = submit_request(Uuid::new_v4(), referral("G-ID")?.into());
    req.get_mut().request_id = "not-a-uuid".to_owned();
    let status = match client.submit_referral(req).await {
        Ok(r) => return Err(format!("accepted: {r:?}").into()),
        Err(s) => s,
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = mskflow_proto::convert::violations(&status);
    assert!(
        violations.iter().any(|v| v.field == "request_id"),
        "{violations:?}"
    );
    app.stop().await
}

#[tokio::test]
async fn a_duplicate_is_already_exists_with_the_referral_id() -> TestResult {
    let app = spawn_app().await?;
    let mut client = app.client().await?;
    let request_id = Uuid::new_v4();
    let first = client
        .submit_referral(submit_request(request_id, referral("G-DUP")?.into()))
        .await?
        .into_inner();
    for again in [
        submit_request(request_id, referral("G-DUP")?.into()),
        submit_request(Uuid::new_v4(), referral("G-DUP")?.into()),
    ] {
        let status = match client.submit_referral(again).await {
            Ok(r) => return Err(format!("accepted twice: {r:?}").into()),
            Err(s) => s,
        };
        assert_eq!(status.code(), Code::AlreadyExists);
        let id = status
            .metadata()
            .get(mskflow_proto::REFERRAL_ID_METADATA)
            .ok_or("no referral id metadata")?
            .to_str()?;
        assert_eq!(id, first.referral_id);
    }
    app.stop().await
}

#[tokio::test]
async fn get_of_an_unknown_referral_is_not_found() -> TestResult {
    let app = spawn_app().await?;
    let mut client = app.client().await?;
    let status = match client
        .get_referral(pb::GetReferralRequest {
            referral_id: Uuid::new_v4().to_string(),
        })
        .await
    {
        Ok(r) => return Err(format!("found: {r:?}").into()),
        Err(s) => s,
    };
    assert_eq!(status.code(), Code::NotFound);
    let bad = client
        .get_referral(pb::GetReferralRequest {
            referral_id: "nope".to_owned(),
        })
        .await;
    assert_eq!(bad.err().map(|s| s.code()), Some(Code::InvalidArgument));
    app.stop().await
}

#[tokio::test]
async fn reflection_lists_the_intake_service() -> TestResult {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let app = spawn_app().await?;
    let channel = Channel::from_shared(format!("http://{}", app.addr))?
        .connect()
        .await?;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    let response = responses.message().await?.ok_or("no reflection response")?;
    let names: Vec<String> = match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => return Err(format!("unexpected reflection response {other:?}").into()),
    };
    assert!(
        names.iter().any(|n| n == "mskflow.intake.v1.IntakeService"),
        "{names:?}"
    );
    app.stop().await
}
