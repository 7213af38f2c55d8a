//! The self-referral pages: each step of the web form, the call handler's
//! form (every step on one page), and the pages that end a journey
//! (refused, safety-netted, confirmed, status). Pure rendering over
//! [`mskflow_selfreferral`]'s questions.

use std::fmt::Write as _;

use mskflow_events::selfreferral::SafetyNetAdvice;
use mskflow_selfreferral::questions::{self, BODY_AREAS, DURATIONS, RED_FLAGS, SEX, WORK};
use mskflow_selfreferral::{Answers, Area, Eligibility, FieldError, SafetyNet, Step};
use uuid::Uuid;

use super::html::{self, Input, Radios, esc};

/// The service's name, in the header of every page.
pub(crate) const SERVICE: &str = "Refer yourself for a muscle, bone or joint problem";

/// One item of a licensed questionnaire, as the outcomes service serves it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    pub link_id: String,
    pub text: String,
    /// (answer code, label)
    pub options: Vec<(String, String)>,
}

/// The questionnaires asked on the last step.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Instruments {
    pub start_back: Vec<Item>,
    pub msk_hq: Vec<Item>,
}

/// What every form page needs besides the answers.
#[derive(Debug)]
pub(crate) struct FormCtx<'a> {
    /// Where the form posts.
    pub action: &'a str,
    pub csrf: &'a str,
    /// The idempotency key of this form (one referral per key).
    pub key: Uuid,
    pub area: &'a Area,
    pub instruments: &'a Instruments,
}

fn err<'a>(errors: &'a [FieldError], field: &str) -> Option<&'a str> {
    errors
        .iter()
        .find(|e| e.field == field)
        .map(|e| e.message.as_str())
}

fn owned<T: Copy>(
    choices: questions::Choices<T>,
    code: impl Fn(T) -> &'static str,
) -> Vec<(String, String)> {
    choices
        .iter()
        .map(|(c, l)| (code(*c).to_owned(), (*l).to_owned()))
        .collect()
}

fn yes_no() -> Vec<(String, String)> {
    vec![
        ("yes".to_owned(), "Yes".to_owned()),
        ("no".to_owned(), "No".to_owned()),
    ]
}

/// The fields of one step.
fn fields(
    step: Step,
    a: &Answers,
    errors: &[FieldError],
    ctx: &FormCtx<'_>,
    telephone: bool,
) -> String {
    let you = |web: &'static str, phone: &'static str| if telephone { phone } else { web };
    let mut out = String::new();
    match step {
        Step::Eligibility => {
            out += &html::input(&Input {
                name: "dob",
                label: you("What is your date of birth?", "Caller's date of birth"),
                hint: Some("For example, 27 March 1980"),
                value: a.get("dob"),
                error: err(errors, "dob"),
                attrs: r#" type="date" autocomplete="bday""#,
                width: "input-date",
            });
            let mut practices: Vec<(String, String)> = ctx
                .area
                .practices
                .iter()
                .map(|p| (p.ods.as_str().to_owned(), p.name.clone()))
                .collect();
            practices.push((
                "not-listed".to_owned(),
                "My GP practice is not on this list".to_owned(),
            ));
            out += &html::select(
                "practice",
                you(
                    "Which GP practice are you registered with?",
                    "Caller's GP practice",
                ),
                Some(&format!(
                    "This service is for people registered with a GP practice in {}",
                    ctx.area.name
                )),
                &practices,
                a.get("practice"),
                err(errors, "practice"),
            );
        }
        Step::AboutYou => {
            for (name, label, hint, attrs, width) in [
                (
                    "given",
                    "First name",
                    None,
                    r#" autocomplete="given-name" spellcheck="false""#,
                    "input-20",
                ),
                (
                    "family",
                    "Last name",
                    None,
                    r#" autocomplete="family-name" spellcheck="false""#,
                    "input-20",
                ),
                (
                    "nhs_number",
                    "NHS number (optional)",
                    Some(
                        "This is a 10 digit number, like 943 476 5919. You can find it on the NHS App, or on any letter from the NHS. If you do not know it, leave this blank.",
                    ),
                    r#" inputmode="numeric" spellcheck="false""#,
                    "input-10",
                ),
                (
                    "postcode",
                    "Home postcode",
                    None,
                    r#" autocomplete="postal-code" spellcheck="false""#,
                    "input-10",
                ),
                (
                    "phone",
                    "Phone number",
                    Some("We will call you on this number to arrange your appointment"),
                    r#" type="tel" autocomplete="tel""#,
                    "input-20",
                ),
                (
                    "email",
                    "Email address (optional)",
                    None,
                    r#" type="email" autocomplete="email" spellcheck="false""#,
                    "input-30",
                ),
            ] {
                out += &html::input(&Input {
                    name,
                    label,
                    hint,
                    value: a.get(name),
                    error: err(errors, name),
                    attrs,
                    width,
                });
            }
            out += &html::radios(&Radios {
                name: "sex",
                legend: "What sex were you registered with at birth?",
                hint: None,
                options: &owned(SEX, |s| s.code()),
                selected: a.get("sex"),
                error: err(errors, "sex"),
                inline: false,
                heading: false,
            });
        }
        Step::Symptoms => {
            let _ = write!(
                out,
                r#"<p>{}</p>"#,
                esc(you(
                    "Some symptoms need care straight away. Answer these questions first.",
                    "Ask these questions first. A yes to any of them stops the call's referral questions.",
                ))
            );
            for q in RED_FLAGS {
                out += &html::radios(&Radios {
                    name: q.field,
                    legend: q.text,
                    hint: None,
                    options: &yes_no(),
                    selected: a.get(q.field),
                    error: err(errors, q.field),
                    inline: true,
                    heading: false,
                });
            }
        }
        Step::Problem => {
            out += &html::radios(&Radios {
                name: "body_area",
                legend: "Where is the problem?",
                hint: Some(
                    "If you have more than one problem, choose the one that bothers you most",
                ),
                options: &owned(BODY_AREAS, |c| c.code()),
                selected: a.get("body_area"),
                error: err(errors, "body_area"),
                inline: false,
                heading: false,
            });
            out += &html::radios(&Radios {
                name: "duration",
                legend: "How long have you had it?",
                hint: None,
                options: &owned(DURATIONS, |c| c.code()),
                selected: a.get("duration"),
                error: err(errors, "duration"),
                inline: false,
                heading: false,
            });
            out += &html::textarea(
                "worse",
                "What makes it worse? (optional)",
                Some("For example, sitting for a long time, lifting, or climbing stairs"),
                a.get("worse"),
                err(errors, "worse"),
            );
            out += &html::radios(&Radios {
                name: "work",
                legend: "Which best describes your work?",
                hint: None,
                options: &owned(WORK, |c| c.code()),
                selected: a.get("work"),
                error: err(errors, "work"),
                inline: false,
                heading: false,
            });
        }
        Step::Questionnaires => {
            if telephone || mskflow_selfreferral::start_back_asked(a) {
                let title = if telephone {
                    "STarT Back (ask only for lower back pain)"
                } else {
                    "Your back pain"
                };
                out += &instrument(title, "sb", &ctx.instruments.start_back, a, errors);
            }
            out += &instrument(
                "Your symptoms over the last 2 weeks",
                "mskhq",
                &ctx.instruments.msk_hq,
                a,
                errors,
            );
            out += &html::checkbox(
                "consent",
                you(
                    "I agree that the muscle, bone and joint service can use these answers to assess and treat me, and share them with my GP practice",
                    "The caller agrees that the service can use these answers to assess and treat them, and share them with their GP practice",
                ),
                a.get("consent") == Some("yes"),
                err(errors, "consent"),
            );
        }
    }
    out
}

fn instrument(
    title: &str,
    prefix: &str,
    items: &[Item],
    a: &Answers,
    errors: &[FieldError],
) -> String {
    let mut out = format!(r#"<h2 class="heading-m">{}</h2>"#, esc(title));
    for item in items {
        let name = format!("{prefix}-{}", item.link_id);
        out += &html::radios(&Radios {
            name: &name,
            legend: &item.text,
            hint: None,
            options: &item.options,
            selected: a.get(&name),
            error: err(errors, &name),
            inline: item.options.len() <= 2,
            heading: false,
        });
    }
    out
}

fn summary(errors: &[FieldError]) -> String {
    let pairs: Vec<(String, String)> = errors
        .iter()
        .map(|e| (e.field.clone(), e.message.clone()))
        .collect();
    html::error_summary(&pairs)
}

fn form_open(ctx: &FormCtx<'_>) -> String {
    format!(
        r#"<form method="post" action="{}" novalidate>{}{}"#,
        esc(ctx.action),
        html::hidden("csrf", ctx.csrf),
        html::hidden("key", &ctx.key.to_string()),
    )
}

/// One step of the web form; answers of earlier steps travel as hidden
/// fields (they are checked again at every step).
pub(crate) fn step_page(
    step: Step,
    a: &Answers,
    errors: &[FieldError],
    ctx: &FormCtx<'_>,
) -> String {
    let mut main = summary(errors);
    let _ = write!(
        main,
        r#"<span class="caption">Step {} of {}</span><h1 class="heading-l">{}</h1>"#,
        step.number(),
        Step::ALL.len(),
        esc(step.title())
    );
    if step == Step::Eligibility {
        main += r#"<p>Use this form to refer yourself to the muscle, bone and joint (MSK) physiotherapy service if you are 16 or over. It takes about 10 minutes.</p>
<div class="inset"><p>Call <strong>999</strong> or go to A&amp;E now if you have back pain with numbness around your bottom or genitals, or cannot control when you pee or poo.</p></div>"#;
    }
    main += &form_open(ctx);
    main += &html::hidden("step", &step.number().to_string());
    for (field, value) in &a.0 {
        if mskflow_selfreferral::step_of(field).is_some_and(|s| s < step) {
            main += &html::hidden(field, value);
        }
    }
    main += &fields(step, a, errors, ctx, false);
    main += &html::button(if step == Step::Questionnaires {
        "Send my referral"
    } else {
        "Continue"
    });
    main += "</form>";
    html::page(step.title(), !errors.is_empty(), SERVICE, &main)
}

/// The call handler's form: every step on one page, red flags before the
/// problem.
pub(crate) fn telephone_page(
    a: &Answers,
    errors: &[FieldError],
    ctx: &FormCtx<'_>,
    taken_by: &str,
) -> String {
    let mut main = summary(errors);
    let _ = write!(
        main,
        r#"<span class="caption">Telephone self-referral</span><h1 class="heading-l">Take a self-referral by phone</h1><p>You are signed in as <strong>{}</strong>. The referral will record that you took the call.</p>"#,
        esc(taken_by)
    );
    main += &form_open(ctx);
    for step in Step::ALL {
        let _ = write!(
            main,
            r#"<h2 class="heading-m">{}. {}</h2>"#,
            step.number(),
            esc(step.title())
        );
        main += &fields(step, a, errors, ctx, true);
    }
    main += &html::button("Record the referral");
    main += "</form>";
    html::page(
        "Take a self-referral by phone",
        !errors.is_empty(),
        SERVICE,
        &main,
    )
}

/// The person cannot use the service.
pub(crate) fn refused_page(why: &Eligibility, area: &Area) -> String {
    let (title, body) = match why {
        Eligibility::TooYoung { min_age } => (
            "You cannot use this service",
            format!(
                "<p>This service is for people aged {min_age} and over.</p><p>Contact your GP practice for help with a muscle, bone or joint problem. They can refer you to the right service for children and young people.</p>"
            ),
        ),
        _ => (
            "Your GP practice is not in this area",
            format!(
                "<p>This service is only for people registered with a GP practice in {}.</p><p>Contact your GP practice or visit your local NHS website to find out how to get help with a muscle, bone or joint problem where you live.</p>",
                esc(&area.name)
            ),
        ),
    };
    let main = format!(
        r#"<h1 class="heading-l">{title}</h1>{body}<div class="inset"><p>If your symptoms are severe or getting worse, call <strong>111</strong> for NHS 111. Call <strong>999</strong> or go to A&amp;E if you cannot control when you pee or poo, or have numbness around your bottom or genitals.</p></div><p><a href="/self-referral">Start again</a></p>"#
    );
    html::page(title, false, SERVICE, &main)
}

/// A red flag: where to go now. The referral was recorded.
pub(crate) fn safety_net_page(net: &SafetyNet, reference: &str, telephone: bool) -> String {
    let (title, class, body) = match net.advice {
        SafetyNetAdvice::Emergency => (
            "Call 999 or go to A&E now",
            "care-card care-card-emergency",
            if telephone {
                "<p>Tell the caller: <strong>call 999 now, or go straight to A&amp;E</strong>. Do not wait for a physiotherapy appointment.</p><p>The caller's symptoms can be a sign of cauda equina syndrome, which needs treatment in hospital straight away.</p>"
            } else {
                "<p><strong>Call 999 now, or go straight to A&amp;E.</strong> Do not wait for a physiotherapy appointment.</p><p>Your symptoms can be a sign of a serious problem with the nerves in your lower back (cauda equina syndrome). It needs treatment in hospital straight away.</p><p>Take this page, or your reference number, with you if you can.</p>"
            },
        ),
        SafetyNetAdvice::UrgentGp => (
            "Contact your GP practice urgently",
            "care-card care-card-urgent",
            if telephone {
                "<p>Tell the caller: <strong>contact your GP practice today</strong>. If the practice is closed, <strong>call 111</strong> for NHS 111.</p><p>Their answers mean a doctor should check them soon, before physiotherapy.</p>"
            } else {
                "<p><strong>Contact your GP practice today.</strong> If your practice is closed, <strong>call 111</strong> for NHS 111.</p><p>Your answers mean a doctor should check you soon, before physiotherapy.</p><p>Call <strong>999</strong> if you get much worse.</p>"
            },
        ),
    };
    let main = format!(
        r#"<div class="{class}"><h1 class="heading-l">{title}</h1>{body}</div><p>We have recorded your answers and told the service. Your reference number is <strong class="reference">{reference}</strong>.</p>"#,
        title = esc(title),
        reference = esc(reference)
    );
    html::page(title, false, SERVICE, &main)
}

/// The referral was sent.
pub(crate) fn confirmation_page(reference: &str, taken_by: Option<&str>) -> String {
    let who = taken_by.map_or(String::new(), |t| {
        format!("<p>Recorded as taken by <strong>{}</strong>.</p>", esc(t))
    });
    let main = format!(
        r#"<div class="panel"><h1 class="panel-title">Referral sent</h1><div class="panel-body">Your reference number<br><strong class="reference">{reference}</strong></div></div>{who}
<h2 class="heading-m">What happens next</h2>
<p>A physiotherapist will look at your answers. We will contact you by phone, usually within 2 weeks, to arrange your first appointment.</p>
<p>Keep your reference number. You can <a href="/self-referral/status">check the progress of your referral</a> with it and your date of birth.</p>
<div class="inset"><p>If your symptoms get much worse before then, contact your GP practice or call <strong>111</strong>. Call <strong>999</strong> or go to A&amp;E if you cannot control when you pee or poo, or have numbness around your bottom or genitals.</p></div>"#,
        reference = esc(reference)
    );
    html::page("Referral sent", false, SERVICE, &main)
}

/// The status look-up form.
pub(crate) fn status_form(csrf: &str, a: &Answers, errors: &[FieldError]) -> String {
    let mut main = summary(errors);
    main += r#"<h1 class="heading-l">Check the progress of your referral</h1><p>You need the reference number you were given when you referred yourself.</p>"#;
    let _ = write!(
        main,
        r#"<form method="post" action="/self-referral/status" novalidate>{}"#,
        html::hidden("csrf", csrf)
    );
    main += &html::input(&Input {
        name: "reference",
        label: "Reference number",
        hint: Some("For example, MSK-7K3Q-9XPD"),
        value: a.get("reference"),
        error: err(errors, "reference"),
        attrs: r#" spellcheck="false" autocomplete="off""#,
        width: "input-10",
    });
    main += &html::input(&Input {
        name: "dob",
        label: "Date of birth",
        hint: None,
        value: a.get("dob"),
        error: err(errors, "dob"),
        attrs: r#" type="date" autocomplete="bday""#,
        width: "input-date",
    });
    main += &html::button("Check progress");
    main += "</form>";
    html::page(
        "Check the progress of your referral",
        !errors.is_empty(),
        SERVICE,
        &main,
    )
}

/// The status of one referral, in plain words (`code`, `label`: the Task's
/// business status).
pub(crate) fn status_page(reference: &str, code: &str, label: &str) -> String {
    let main = format!(
        r#"<h1 class="heading-l">Your referral</h1><dl class="summary-list"><div class="summary-list-row"><dt>Reference number</dt><dd>{}</dd></div><div class="summary-list-row"><dt>Progress</dt><dd data-status="{}">{}</dd></div></dl><p>If your symptoms get much worse while you wait, contact your GP practice or call <strong>111</strong>.</p><p><a href="/self-referral/status">Check another referral</a></p>"#,
        esc(reference),
        esc(code),
        esc(label)
    );
    html::page("Your referral", false, SERVICE, &main)
}

/// A page for a problem on our side or with the request.
pub(crate) fn problem_page(title: &str, message: &str) -> String {
    let main = format!(
        r#"<h1 class="heading-l">{}</h1><p>{}</p><p><a href="/self-referral">Start again</a></p><p>If you need help now, call <strong>111</strong>, or <strong>999</strong> in an emergency.</p>"#,
        esc(title),
        esc(message)
    );
    html::page(title, false, SERVICE, &main)
}
