//! The gRPC service over a real socket, with the real SQLite store and the
//! consumer running in the background.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{BoxError, TestResult, as_log, at, open_assessment, open_store, triage};
use mskflow_assessment::{Options, Policy, Service};
use mskflow_eventlog_sqlite::SqliteEventLog;
use mskflow_events::types::{FcpPriority, Pathway};
use mskflow_proto::assessment::v1 as pb;
use mskflow_proto::assessment::v1::assessment_service_client::AssessmentServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

/// A running assessment service on port 0 with a fresh store.
struct App {
    addr: SocketAddr,
    store: SqliteEventLog,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), mskflow_assessment::Error>>,
    dir: tempfile::TempDir,
}

impl App {
    async fn client(&self) -> Result<AssessmentServiceClient<Channel>, tonic::transport::Error> {
        AssessmentServiceClient::connect(format!("http://{}", self.addr)).await
    }

    /// Stop the service; the store stays open for inspection.
    async fn stop(&mut self) -> TestResult {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.server).await??;
        Ok(())
    }
}

async fn spawn_app() -> Result<App, BoxError> {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let service = Service::build(
        Options {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            policy: Policy::default(),
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
        dir,
    })
}

/// Triage a referral as intake would and wait for the consumer to put it
/// on the worklist.
async fn triaged(
    app: &App,
    client: &mut AssessmentServiceClient<Channel>,
    pathway: Pathway,
) -> Result<Uuid, BoxError> {
    let id = Uuid::new_v4();
    triage(&app.store, id, FcpPriority::Soon, pathway, at(0)).await?;
    for _ in 0..200 {
        let list = client
            .list_worklist(pb::ListWorklistRequest { pathway: None })
            .await?
            .into_inner();
        if list.entries.iter().any(|e| e.referral_id == id.to_string()) {
            return Ok(id);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err("referral never reached the worklist".into())
}

fn pb_slot(slot_id: Uuid, minutes: i64) -> pb::Slot {
    let s = common::slot(slot_id, minutes);
    pb::Slot {
        slot_id: slot_id.to_string(),
        clinician_id: s.clinician_id,
        start: s.start.to_rfc3339(),
        end: s.end.to_rfc3339(),
        mode: "face-to-face".to_owned(),
        location: Some("Riverside Health Centre".to_owned()),
    }
}

async fn publish(
    client: &mut AssessmentServiceClient<Channel>,
    n: usize,
) -> Result<Vec<Uuid>, BoxError> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let response = client
        .publish_slots(pb::PublishSlotsRequest {
            slots: ids
                .iter()
                .enumerate()
                .map(|(i, id)| pb_slot(*id, i as i64 * 30))
                .collect(),
        })
        .await?
        .into_inner();
    assert_eq!(response.slot_ids.len(), n);
    Ok(ids)
}

fn book(referral_id: Uuid, slot_id: Uuid) -> pb::BookAssessmentRequest {
    pb::BookAssessmentRequest {
        referral_id: referral_id.to_string(),
        slot_id: slot_id.to_string(),
    }
}

fn expect_err<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
) -> Result<tonic::Status, BoxError> {
    match result {
        Ok(r) => Err(format!("accepted: {r:?}").into()),
        Err(s) => Ok(s),
    }
}

#[tokio::test]
async fn book_then_get_and_the_checkpoint_survives_shutdown() -> TestResult {
    let mut app = spawn_app().await?;
    let mut client = app.client().await?;
    let referral = triaged(&app, &mut client, Pathway::Knee).await?;
    let slots = publish(&mut client, 1).await?;

    let episode = client
        .book_assessment(book(referral, slots[0]))
        .await?
        .into_inner();
    assert_eq!(episode.status, "booked");
    assert_eq!(episode.priority, "soon");
    assert_eq!(episode.pathway, "knee");
    assert_eq!(episode.version, 2);
    let booking = episode.booking.clone().ok_or("no booking")?;
    assert_eq!(booking.slot_id, slots[0].to_string());
    assert_eq!(booking.mode, "face-to-face");
    let got = client
        .get_episode(pb::GetEpisodeRequest {
            referral_id: referral.to_string(),
        })
        .await?
        .into_inner();
    assert_eq!(got, episode);
    // Booked referrals are off the worklist.
    let list = client
        .list_worklist(pb::ListWorklistRequest { pathway: None })
        .await?
        .into_inner();
    assert!(list.entries.is_empty(), "{list:?}");

    app.stop().await?;
    // The consumer committed: a restart delivers nothing again.
    let assessment = open_assessment(as_log(&app.store), Policy::default(), app.dir.path()).await?;
    let mut consumer = mskflow_assessment::consumer::open(assessment).await?;
    let redelivered = consumer.process_available().await?;
    assert!(redelivered.is_empty(), "{redelivered:?}");
    app.store.close().await;
    drop(app.dir);
    Ok(())
}

#[tokio::test]
async fn a_double_booking_is_refused() -> TestResult {
    let mut app = spawn_app().await?;
    let mut client = app.client().await?;
    let first = triaged(&app, &mut client, Pathway::Hip).await?;
    let second = triaged(&app, &mut client, Pathway::Hip).await?;
    let slots = publish(&mut client, 2).await?;
    client.book_assessment(book(first, slots[0])).await?;

    // Another referral, same slot.
    let status = expect_err(client.book_assessment(book(second, slots[0])).await)?;
    assert!(
        matches!(status.code(), Code::Aborted | Code::FailedPrecondition),
        "{status:?}"
    );
    // The same referral, a second slot.
    let status = expect_err(client.book_assessment(book(first, slots[1])).await)?;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // The second referral can still have the other slot.
    let episode = client
        .book_assessment(book(second, slots[1]))
        .await?
        .into_inner();
    assert_eq!(episode.status, "booked");
    app.stop().await?;
    app.store.close().await;
    Ok(())
}

#[tokio::test]
async fn invalid_arguments_name_their_fields() -> TestResult {
    let mut app = spawn_app().await?;
    let mut client = app.client().await?;
    let status = expect_err(
        client
            .book_assessment(pb::BookAssessmentRequest {
                referral_id: "nope".to_owned(),
                slot_id: Uuid::new_v4().to_string(),
            })
            .await,
    )?;
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = mskflow_proto::convert::violations(&status)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["referral_id"]);

    let mut bad = pb_slot(Uuid::new_v4(), 0);
    bad.mode = "carrier-pigeon".to_owned();
    std::mem::swap(&mut bad.start, &mut bad.end);
    let status = expect_err(
        client
            .publish_slots(pb::PublishSlotsRequest {
                slots: vec![pb_slot(Uuid::new_v4(), 0), bad],
            })
            .await,
    )?;
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = mskflow_proto::convert::violations(&status)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["slots[1].mode", "slots[1].end"]);

    let status = expect_err(
        client
            .complete_assessment(pb::CompleteAssessmentRequest {
                referral_id: Uuid::new_v4().to_string(),
                findings_summary: "x".to_owned(),
                psychological_distress: "negative".to_owned(),
                outcomes: vec![pb::Outcome {
                    outcome: "onward-referral".to_owned(),
                    destination: Some("astrology".to_owned()),
                    reason: Some("r".to_owned()),
                    ..pb::Outcome::default()
                }],
                ..pb::CompleteAssessmentRequest::default()
            })
            .await,
    )?;
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = mskflow_proto::convert::violations(&status)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["outcomes[0].destination"]);
    app.stop().await?;
    app.store.close().await;
    Ok(())
}

#[tokio::test]
async fn complete_not_found_and_domain_refusals() -> TestResult {
    let mut app = spawn_app().await?;
    let mut client = app.client().await?;
    let status = expect_err(
        client
            .get_episode(pb::GetEpisodeRequest {
                referral_id: Uuid::new_v4().to_string(),
            })
            .await,
    )?;
    assert_eq!(status.code(), Code::NotFound);

    let shoulder = triaged(&app, &mut client, Pathway::Shoulder).await?;
    let slots = publish(&mut client, 1).await?;
    let escape = |referral: Uuid| pb::CompleteAssessmentRequest {
        referral_id: referral.to_string(),
        findings_summary: "Rotator cuff related shoulder pain".to_owned(),
        psychological_distress: "not-screened".to_owned(),
        outcomes: vec![pb::Outcome {
            outcome: "group-programme".to_owned(),
            programme: Some("escape-pain".to_owned()),
            ..pb::Outcome::default()
        }],
        ..pb::CompleteAssessmentRequest::default()
    };
    // Not booked yet.
    let status = expect_err(client.complete_assessment(escape(shoulder)).await)?;
    assert_eq!(status.code(), Code::FailedPrecondition);
    client.book_assessment(book(shoulder, slots[0])).await?;
    // ESCAPE-pain is not for shoulders.
    let status = expect_err(client.complete_assessment(escape(shoulder)).await)?;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("ESCAPE-pain"), "{status:?}");

    let mut ortho = escape(shoulder);
    ortho.bmi = Some(45.0);
    ortho.smoking_status = Some("current".to_owned());
    ortho.outcomes = vec![pb::Outcome {
        outcome: "onward-referral".to_owned(),
        destination: Some("orthopaedics".to_owned()),
        reason: Some("full-thickness tear, surgical opinion".to_owned()),
        ..pb::Outcome::default()
    }];
    let episode = client.complete_assessment(ortho).await?.into_inner();
    assert_eq!(episode.status, "assessed");
    assert_eq!(episode.onward_referrals.len(), 1);
    let sr: serde_json::Value =
        serde_json::from_str(&episode.onward_referrals[0].service_request_json)?;
    assert_eq!(sr["resourceType"], "ServiceRequest");
    assert_eq!(episode.onward_referrals[0].delivery, "pending");
    app.stop().await?;
    app.store.close().await;
    Ok(())
}

#[tokio::test]
async fn reflection_lists_the_assessment_service() -> TestResult {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mut app = spawn_app().await?;
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
            .any(|n| n == "mskflow.assessment.v1.AssessmentService"),
        "{names:?}"
    );
    app.stop().await?;
    app.store.close().await;
    Ok(())
}
