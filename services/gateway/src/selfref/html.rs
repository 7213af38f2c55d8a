//! HTML building blocks of the self-referral pages, in the style of the NHS
//! design system (our own small stylesheet, `style.css`; no scripts, no
//! external resources): the page layout, form fields with their labels,
//! hints and error messages, and the error summary. Pure: strings in,
//! strings out, every value escaped.

use std::fmt::Write as _;

/// Escape text for HTML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: `title` (prefixed "Error: " when the page shows errors)
/// and the main content.
pub(crate) fn page(title: &str, has_errors: bool, service: &str, main: &str) -> String {
    let prefix = if has_errors { "Error: " } else { "" };
    format!(
        r##"<!DOCTYPE html>
<html lang="en-GB">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{prefix}{title} - {service} - NHS</title>
<link rel="stylesheet" href="/self-referral/style.css">
</head>
<body>
<a class="skip-link" href="#main">Skip to main content</a>
<header class="header">
<div class="width">
<a class="header-home" href="/self-referral"><span class="logo">NHS</span><span class="header-service">{service}</span></a>
</div>
</header>
<div class="width">
<main id="main" class="main" tabindex="-1">
{main}
</main>
</div>
<footer class="footer">
<div class="width">
<p>If you need help now, call <strong>999</strong> in an emergency or <strong>111</strong> for NHS 111.</p>
<p><a href="/self-referral/status">Check the progress of a referral</a></p>
</div>
</footer>
</body>
</html>
"##,
        title = esc(title),
        service = esc(service),
    )
}

/// The error summary at the top of a page: each error links to its field.
pub(crate) fn error_summary(errors: &[(String, String)]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let mut items = String::new();
    for (field, message) in errors {
        let _ = write!(
            items,
            r##"<li><a href="#{}">{}</a></li>"##,
            esc(&field_id(field)),
            esc(message)
        );
    }
    format!(
        r#"<div class="error-summary" role="alert" tabindex="-1" aria-labelledby="error-summary-title">
<h2 id="error-summary-title" class="error-summary-title">There is a problem</h2>
<ul class="error-summary-list">{items}</ul>
</div>
"#
    )
}

/// The id of a field's input (the first radio of a group).
pub(crate) fn field_id(field: &str) -> String {
    format!("f-{field}")
}

fn error_message(field: &str, error: Option<&str>) -> (String, String) {
    match error {
        Some(e) => (
            format!(
                r#"<p class="error-message" id="{}-error"><span class="visually-hidden">Error:</span> {}</p>"#,
                esc(&field_id(field)),
                esc(e)
            ),
            format!("{}-error", field_id(field)),
        ),
        None => (String::new(), String::new()),
    }
}

fn described_by(ids: &[&str]) -> String {
    let ids: Vec<&str> = ids.iter().copied().filter(|s| !s.is_empty()).collect();
    if ids.is_empty() {
        String::new()
    } else {
        format!(r#" aria-describedby="{}""#, ids.join(" "))
    }
}

fn hint(field: &str, hint: Option<&str>) -> (String, String) {
    match hint {
        Some(h) => (
            format!(
                r#"<div class="hint" id="{}-hint">{}</div>"#,
                esc(&field_id(field)),
                esc(h)
            ),
            format!("{}-hint", field_id(field)),
        ),
        None => (String::new(), String::new()),
    }
}

/// What every field has around its control: its id, hint and error
/// message (with their ids, for `aria-describedby`) and the group's class.
struct Parts {
    id: String,
    hint_html: String,
    err_html: String,
    group: &'static str,
    aria: String,
}

fn parts(name: &str, hint_text: Option<&str>, error: Option<&str>) -> Parts {
    let (hint_html, hint_id) = hint(name, hint_text);
    let (err_html, err_id) = error_message(name, error);
    Parts {
        id: field_id(name),
        hint_html,
        err_html,
        group: if error.is_some() {
            " form-group-error"
        } else {
            ""
        },
        aria: described_by(&[&hint_id, &err_id]),
    }
}

/// A text input. `attrs`: extra attributes (`autocomplete`, `inputmode`,
/// `type`), already safe.
pub(crate) struct Input<'a> {
    pub name: &'a str,
    pub label: &'a str,
    pub hint: Option<&'a str>,
    pub value: Option<&'a str>,
    pub error: Option<&'a str>,
    pub attrs: &'a str,
    pub width: &'a str,
}

pub(crate) fn input(i: &Input<'_>) -> String {
    let Parts {
        id,
        hint_html,
        err_html,
        group,
        aria,
    } = parts(i.name, i.hint, i.error);
    let invalid = if i.error.is_some() {
        r#" aria-invalid="true""#
    } else {
        ""
    };
    format!(
        r#"<div class="form-group{group}">
<label class="label" for="{id}">{label}</label>
{hint_html}{err_html}<input class="input {width}" id="{id}" name="{name}" value="{value}"{attrs}{invalid}{describedby}>
</div>
"#,
        id = esc(&id),
        label = esc(i.label),
        name = esc(i.name),
        value = esc(i.value.unwrap_or_default()),
        width = esc(i.width),
        attrs = i.attrs,
        describedby = aria,
    )
}

/// A multi-line text input.
pub(crate) fn textarea(
    name: &str,
    label: &str,
    hint_text: Option<&str>,
    value: Option<&str>,
    error: Option<&str>,
) -> String {
    let Parts {
        id,
        hint_html,
        err_html,
        group,
        aria,
    } = parts(name, hint_text, error);
    format!(
        r#"<div class="form-group{group}">
<label class="label" for="{id}">{label}</label>
{hint_html}{err_html}<textarea class="textarea" id="{id}" name="{name}" rows="4" maxlength="500"{describedby}>{value}</textarea>
</div>
"#,
        id = esc(&id),
        label = esc(label),
        name = esc(name),
        value = esc(value.unwrap_or_default()),
        describedby = aria,
    )
}

/// A group of radios with its legend. `options`: (value, label).
pub(crate) struct Radios<'a> {
    pub name: &'a str,
    pub legend: &'a str,
    pub hint: Option<&'a str>,
    pub options: &'a [(String, String)],
    pub selected: Option<&'a str>,
    pub error: Option<&'a str>,
    pub inline: bool,
    /// The legend as the page heading (a page asking one question).
    pub heading: bool,
}

pub(crate) fn radios(r: &Radios<'_>) -> String {
    let Parts {
        hint_html,
        err_html,
        group,
        aria,
        ..
    } = parts(r.name, r.hint, r.error);
    let inline = if r.inline { " radios-inline" } else { "" };
    let legend_class = if r.heading {
        "legend legend-heading"
    } else {
        "legend"
    };
    let mut items = String::new();
    for (i, (value, label)) in r.options.iter().enumerate() {
        let id = if i == 0 {
            field_id(r.name)
        } else {
            format!("{}-{}", field_id(r.name), i + 1)
        };
        let checked = if r.selected == Some(value.as_str()) {
            " checked"
        } else {
            ""
        };
        let _ = write!(
            items,
            r#"<div class="radios-item"><input class="radios-input" id="{id}" name="{name}" type="radio" value="{value}"{checked}><label class="radios-label" for="{id}">{label}</label></div>"#,
            id = esc(&id),
            name = esc(r.name),
            value = esc(value),
            label = esc(label),
        );
    }
    format!(
        r#"<div class="form-group{group}">
<fieldset class="fieldset"{describedby}>
<legend class="{legend_class}">{legend}</legend>
{hint_html}{err_html}<div class="radios{inline}">{items}</div>
</fieldset>
</div>
"#,
        legend = esc(r.legend),
        describedby = aria,
    )
}

/// A single checkbox (consent).
pub(crate) fn checkbox(name: &str, label: &str, checked: bool, error: Option<&str>) -> String {
    let Parts {
        id,
        err_html,
        group,
        aria,
        ..
    } = parts(name, None, error);
    format!(
        r#"<div class="form-group{group}">
{err_html}<div class="checkboxes-item"><input class="checkboxes-input" id="{id}" name="{name}" type="checkbox" value="yes"{checked}{describedby}><label class="checkboxes-label" for="{id}">{label}</label></div>
</div>
"#,
        id = esc(&id),
        name = esc(name),
        label = esc(label),
        checked = if checked { " checked" } else { "" },
        describedby = aria,
    )
}

/// A select with its label. `options`: (value, label).
pub(crate) fn select(
    name: &str,
    label: &str,
    hint_text: Option<&str>,
    options: &[(String, String)],
    selected: Option<&str>,
    error: Option<&str>,
) -> String {
    let Parts {
        id,
        hint_html,
        err_html,
        group,
        aria,
    } = parts(name, hint_text, error);
    let mut opts = String::from(r#"<option value="">Select your GP practice</option>"#);
    for (value, text) in options {
        let sel = if selected == Some(value.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            opts,
            r#"<option value="{}"{sel}>{}</option>"#,
            esc(value),
            esc(text)
        );
    }
    format!(
        r#"<div class="form-group{group}">
<label class="label" for="{id}">{label}</label>
{hint_html}{err_html}<select class="select" id="{id}" name="{name}"{describedby}>{opts}</select>
</div>
"#,
        id = esc(&id),
        label = esc(label),
        name = esc(name),
        describedby = aria,
    )
}

pub(crate) fn hidden(name: &str, value: &str) -> String {
    format!(
        r#"<input type="hidden" name="{}" value="{}">"#,
        esc(name),
        esc(value)
    )
}

/// A green call-to-action button.
pub(crate) fn button(text: &str) -> String {
    format!(
        r#"<button class="button" type="submit">{}</button>"#,
        esc(text)
    )
}
