//! The gRPC service over a real socket, with the real SQLite store.

mod common;

use std::net::SocketAddr;

use common::{TestClock, TestResult, append_pathway_event, as_log, at, open_store};
use mskflow_eventlog_sqlite::SqliteEventLog;
use mskflow_outcomes::{Options, Service};
use mskflow_proto::convert::violations;
use mskflow_proto::outcomes::v1 as pb;
use mskflow_proto::outcomes::v1::outcomes_service_client::OutcomesServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

/// A running outcomes service on port 0 with a fresh store.
struct App {
    addr: SocketAddr,
    store: SqliteEventLog,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), mskflow_outcomes::Error>>,
    _dir: tempfile::TempDir,
}

impl App {
    async fn client(&self) -> Result<OutcomesServiceClient<Channel>, tonic::transport::Error> {
        OutcomesServiceClient::connect(format!("http://{}", self.addr)).await
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
    let service = Service::build_with_clock(
        Options::new(SocketAddr::from(([127, 0, 0, 1], 0))),
        as_log(&store),
        TestClock::new(at(2026, 1, 6)),
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

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn msk_hq_request(referral_id: Uuid, timepoint: &str, values: &[i32]) -> pb::SubmitResponseRequest {
    pb::SubmitResponseRequest {
        referral_id: referral_id.to_string(),
        measure: "msk-hq".to_owned(),
        timepoint: timepoint.to_owned(),
        answers: values
            .iter()
            .enumerate()
            .map(|(i, v)| pb::ItemAnswer {
                link_id: (i + 1).to_string(),
                value: *v,
            })
            .collect(),
        response_id: Uuid::new_v4().to_string(),
        correlation_id: String::new(),
    }
}

#[tokio::test]
async fn submit_valid_response_then_read_outcomes() -> TestResult {
    let app = spawn_app().await?;
    let mut client = app.client().await?;
    let rid = Uuid::new_v4();

    let mut request = tonic::Request::new(msk_hq_request(rid, "first-contact", &[2; 14]));
    request
        .metadata_mut()
        .insert("traceparent", TRACEPARENT.parse()?);
    let first = client.submit_response(request).await?.into_inner();
    // The events carry the caller's trace.
    let stored = mskflow_eventlog::EventLog::read_stream(
        &app.store,
        &mskflow_outcomes::service::stream_id(rid),
        1,
    )
    .await?;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].traceparent.as_deref(), Some(TRACEPARENT));
    let score = first.score.ok_or("no score")?;
    assert_eq!((score.measure.as_str(), score.value), ("msk-hq", 28.0));
    assert!(first.changes.is_empty());

    let later = client
        .submit_response(msk_hq_request(rid, "discharge", &[3; 14]))
        .await?
        .into_inner();
    assert_eq!(later.changes.len(), 1);
    assert_eq!(later.changes[0].change, 14.0);
    assert!(later.changes[0].reached_minimal_important_change);

    let outcomes = client
        .get_outcomes(pb::GetOutcomesRequest {
            referral_id: rid.to_string(),
        })
        .await?
        .into_inner();
    assert_eq!(outcomes.questionnaires.len(), 2);
    assert!(
        outcomes
            .questionnaires
            .iter()
            .all(|q| q.status == "completed")
    );
    assert_eq!(outcomes.changes.len(), 1);

    // Another response for a completed timepoint.
    let err = client
        .submit_response(msk_hq_request(rid, "discharge", &[1; 14]))
        .await
        .err()
        .ok_or("accepted twice")?;
    assert_eq!(err.code(), Code::FailedPrecondition);
    app.stop().await
}

#[tokio::test]
async fn out_of_range_and_missing_items_are_invalid_argument_naming_the_item() -> TestResult {
    let app = spawn_app().await?;
    let mut client = app.client().await?;
    let rid = Uuid::new_v4();
    let mut values = [2; 14];
    values[6] = 5;
    let mut request = msk_hq_request(rid, "first-contact", &values);
    request.answers.retain(|a| a.link_id != "12");
    let err = client
        .submit_response(request)
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = violations(&err).into_iter().map(|v| v.field).collect();
    assert_eq!(fields, ["answers[link_id=7]", "answers[link_id=12]"]);
    assert!(err.message().contains("item 7"), "{}", err.message());

    let mut request = msk_hq_request(rid, "first-contact", &[1; 14]);
    request.measure = "oxford-knee".to_owned();
    let err = client
        .submit_response(request)
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err)[0].field, "measure");

    // Nothing was recorded.
    let err = client
        .get_outcomes(pb::GetOutcomesRequest {
            referral_id: rid.to_string(),
        })
        .await
        .err()
        .ok_or("found")?;
    assert_eq!(err.code(), Code::NotFound);
    app.stop().await
}

#[tokio::test]
async fn consumer_schedules_and_the_due_list_shows_it() -> TestResult {
    let app = spawn_app().await?;
    let mut client = app.client().await?;
    let rid = Uuid::new_v4();
    let err = client
        .mark_sent(pb::MarkSentRequest {
            referral_id: rid.to_string(),
            measure: "msk-hq".to_owned(),
            timepoint: "first-contact".to_owned(),
        })
        .await
        .err()
        .ok_or("sent unscheduled")?;
    assert_eq!(err.code(), Code::NotFound);

    append_pathway_event(
        &app.store,
        &format!("assessment-{rid}"),
        "AssessmentRequested",
        rid,
        at(2026, 1, 5),
    )
    .await?;
    // The running consumer picks it up.
    let mut due = Vec::new();
    for _ in 0..100 {
        due = client
            .list_due(pb::ListDueRequest {
                as_of: "2026-01-06T00:00:00Z".to_owned(),
                limit: 0,
            })
            .await?
            .into_inner()
            .due;
        if due.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(due.len(), 2, "{due:?}");
    assert!(
        due.iter()
            .all(|d| d.status == "due" && d.due == "2026-01-05T09:00:00Z")
    );

    let sent = client
        .mark_sent(pb::MarkSentRequest {
            referral_id: rid.to_string(),
            measure: "eq-5d-5l".to_owned(),
            timepoint: "first-contact".to_owned(),
        })
        .await?
        .into_inner();
    assert_eq!(sent.status, "sent");

    let q = client
        .get_questionnaire(pb::GetQuestionnaireRequest {
            measure: "msk-hq".to_owned(),
        })
        .await?
        .into_inner();
    let q: serde_json::Value = serde_json::from_str(&q.questionnaire_json)?;
    assert_eq!(q["item"].as_array().map(Vec::len), Some(14));
    app.stop().await
}

#[tokio::test]
async fn reflection_lists_the_outcomes_service() -> TestResult {
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
        names
            .iter()
            .any(|n| n == "mskflow.outcomes.v1.OutcomesService"),
        "{names:?}"
    );
    app.stop().await
}
