//! The gRPC service over a real socket, with the real SQLite store.

mod common;

use std::net::SocketAddr;

use common::{TestResult, as_log, open_store};
use mskflow_eventlog_sqlite::SqliteEventLog;
use mskflow_proto::scheduling::v1 as pb;
use mskflow_proto::scheduling::v1::scheduling_service_client::SchedulingServiceClient;
use mskflow_scheduling::{Options, Policy, Service};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

type Client = SchedulingServiceClient<Channel>;

/// A running scheduling service on port 0 with a fresh store.
struct App {
    addr: SocketAddr,
    store: SqliteEventLog,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), mskflow_scheduling::Error>>,
    _dir: tempfile::TempDir,
}

impl App {
    async fn client(&self) -> Result<Client, tonic::transport::Error> {
        SchedulingServiceClient::connect(format!("http://{}", self.addr)).await
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
        _dir: dir,
    })
}

async fn venue(client: &mut Client) -> Result<(), tonic::Status> {
    client
        .register_venue(pb::RegisterVenueRequest {
            venue_id: "leeds-central".to_owned(),
            name: "Leeds Central Health Centre".to_owned(),
        })
        .await
        .map(|_| ())
}

fn escape_pain_class(capacity: u32) -> pb::ScheduleClassRequest {
    pb::ScheduleClassRequest {
        class_id: String::new(),
        programme: "escape-pain".to_owned(),
        venue_id: "leeds-central".to_owned(),
        days: vec!["monday".to_owned(), "thursday".to_owned()],
        start_time: "10:00".to_owned(),
        duration_minutes: 60,
        capacity,
        start_date: "2026-03-04".to_owned(),
        sessions: 0,
    }
}

async fn waitlist(client: &mut Client, day: u32) -> Result<String, tonic::Status> {
    let referral_id = Uuid::new_v4().to_string();
    client
        .add_to_waiting_list(pb::AddToWaitingListRequest {
            referral_id: referral_id.clone(),
            priority: "routine".to_owned(),
            pathway: "knee".to_owned(),
            programme: "escape-pain".to_owned(),
            need_recorded_at: format!("2026-01-{day:02}T09:00:00Z"),
            choices: Some(pb::Choices {
                venue_ids: vec!["leeds-central".to_owned()],
                days: vec![],
                modes: vec!["face-to-face".to_owned()],
            }),
            sessions: 0,
        })
        .await?;
    Ok(referral_id)
}

#[tokio::test]
async fn schedule_enrol_and_a_full_class_is_refused() -> TestResult {
    let app = spawn_app().await?;
    let mut client = app.client().await?;
    venue(&mut client).await?;
    let class = client
        .schedule_class(escape_pain_class(2))
        .await?
        .into_inner();
    assert_eq!(class.session_dates.len(), 12);
    assert_eq!(
        class.session_dates.first().map(String::as_str),
        Some("2026-03-05")
    );
    assert_eq!(class.places_left, 2);

    let mut booked = Vec::new();
    for day in 1..=2 {
        let referral_id = waitlist(&mut client, day).await?;
        let episode = client
            .book_class(pb::BookClassRequest {
                referral_id: referral_id.clone(),
                class_id: class.class_id.clone(),
            })
            .await?
            .into_inner();
        assert_eq!(episode.status, "booked");
        assert_eq!(episode.sessions.len(), 12);
        assert_eq!(
            episode.sessions.first().map(|s| s.starts_at.as_str()),
            Some("2026-03-05T10:00:00")
        );
        booked.push(referral_id);
    }

    let third = waitlist(&mut client, 3).await?;
    let status = match client
        .book_class(pb::BookClassRequest {
            referral_id: third.clone(),
            class_id: class.class_id.clone(),
        })
        .await
    {
        Ok(r) => return Err(format!("booked into a full class: {r:?}").into()),
        Err(s) => s,
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("full"), "{}", status.message());

    let got = client
        .get_class(pb::GetClassRequest {
            class_id: class.class_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!((got.enrolled, got.places_left), (2, 0));
    let still_waiting = client
        .get_episode(pb::GetEpisodeRequest {
            referral_id: third.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(still_waiting.status, "waiting");
    let list = client
        .list_waiting_list(pb::ListWaitingListRequest::default())
        .await?
        .into_inner();
    assert_eq!(
        list.patients
            .iter()
            .map(|p| p.referral_id.as_str())
            .collect::<Vec<_>>(),
        vec![third.as_str()]
    );

    // A missed session, then a second: the episode ends, the referrer is told.
    for session_no in [1, 2] {
        client
            .record_attendance(pb::RecordAttendanceRequest {
                referral_id: booked[0].clone(),
                session_no,
                attended: false,
            })
            .await?;
    }
    let ended = client
        .get_episode(pb::GetEpisodeRequest {
            referral_id: booked[0].clone(),
        })
        .await?
        .into_inner();
    assert_eq!(ended.status, "discharged");
    assert_eq!(ended.discharge_reason.as_deref(), Some("did-not-attend"));
    assert!(ended.notify_referrer);
    // ... and the freed place can be taken.
    let episode = client
        .book_class(pb::BookClassRequest {
            referral_id: third,
            class_id: class.class_id,
        })
        .await?
        .into_inner();
    assert_eq!(episode.status, "booked");
    app.stop().await
}

#[tokio::test]
async fn malformed_fields_are_invalid_argument_with_field_violations() -> TestResult {
    let app = spawn_app().await?;
    let mut client = app.client().await?;
    venue(&mut client).await?;
    let mut request = escape_pain_class(8);
    request.programme = "pilates".to_owned();
    request.start_time = "ten o'clock".to_owned();
    request.days.push("someday".to_owned());
    let status = match client.schedule_class(request).await {
        Ok(r) => return Err(format!("accepted: {r:?}").into()),
        Err(s) => s,
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = mskflow_proto::convert::violations(&status)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["programme", "days", "start_time"]);

    // A rule of the domain also arrives as a field violation.
    let status = match client.schedule_class(escape_pain_class(40)).await {
        Ok(r) => return Err(format!("accepted: {r:?}").into()),
        Err(s) => s,
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = mskflow_proto::convert::violations(&status);
    assert!(
        violations.iter().any(|v| v.field == "capacity"),
        "{violations:?}"
    );

    let status = match client
        .get_episode(pb::GetEpisodeRequest {
            referral_id: "not-a-uuid".to_owned(),
        })
        .await
    {
        Ok(r) => return Err(format!("found: {r:?}").into()),
        Err(s) => s,
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        mskflow_proto::convert::violations(&status)
            .first()
            .map(|v| v.field.as_str()),
        Some("referral_id")
    );
    app.stop().await
}

#[tokio::test]
async fn unknown_records_are_not_found_and_wrong_state_is_failed_precondition() -> TestResult {
    let app = spawn_app().await?;
    let mut client = app.client().await?;
    let unknown = client
        .get_episode(pb::GetEpisodeRequest {
            referral_id: Uuid::new_v4().to_string(),
        })
        .await;
    assert_eq!(unknown.err().map(|s| s.code()), Some(Code::NotFound));
    let no_venue = client.schedule_class(escape_pain_class(8)).await;
    assert_eq!(no_venue.err().map(|s| s.code()), Some(Code::NotFound));

    venue(&mut client).await?;
    let again = venue(&mut client).await;
    assert_eq!(again.err().map(|s| s.code()), Some(Code::AlreadyExists));

    let referral_id = waitlist(&mut client, 1).await?;
    let not_booked = client
        .record_attendance(pb::RecordAttendanceRequest {
            referral_id,
            session_no: 1,
            attended: true,
        })
        .await;
    assert_eq!(
        not_booked.err().map(|s| s.code()),
        Some(Code::FailedPrecondition)
    );
    app.stop().await
}

#[tokio::test]
async fn reflection_lists_the_scheduling_service() -> TestResult {
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
            .any(|n| n == "mskflow.scheduling.v1.SchedulingService"),
        "{names:?}"
    );
    app.stop().await
}
