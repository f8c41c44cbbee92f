//! The page shell, and the small pieces every page uses: badges, durations and times.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::{Fragment, Viewer, assets};

/// The navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Jobs,
    Clusters,
    Workflows,
    Runners,
}

impl Section {
    const ALL: [Section; 4] = [
        Section::Jobs,
        Section::Clusters,
        Section::Workflows,
        Section::Runners,
    ];

    fn path(self) -> &'static str {
        match self {
            Section::Jobs => "/jobs",
            Section::Clusters => "/clusters",
            Section::Workflows => "/workflows",
            Section::Runners => "/runners",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Section::Jobs => "Jobs",
            Section::Clusters => "Clusters",
            Section::Workflows => "Workflows",
            Section::Runners => "Runners",
        }
    }
}

/// `body` as a whole page, or alone when the script asked for the fragment.
pub fn page(
    viewer: &Viewer,
    fragment: Fragment,
    section: Section,
    title: &str,
    body: Markup,
) -> Response {
    if fragment.0 {
        return body.into_response();
    }
    shell(Some((viewer, section)), title, body).into_response()
}

/// The document around a page: head, navigation (when someone is signed in) and `main`.
pub fn shell(navigation: Option<(&Viewer, Section)>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tilebox" }
                link rel="icon" type="image/svg+xml" href=(assets::FAVICON.url());
                link rel="stylesheet" href=(assets::STYLESHEET.url());
                script src=(assets::SCRIPT.url()) defer {}
            }
            body {
                header.topbar {
                    a.brand href="/jobs" { "tilebox" }
                    @if let Some((viewer, current)) = navigation {
                        nav {
                            @for section in Section::ALL {
                                a href=(section.path())
                                    aria-current=[(section == current).then_some("page")] {
                                    (section.label())
                                }
                            }
                        }
                        div.who {
                            span.key title="the API key this console acts as" { (viewer.name()) }
                            @if viewer.signed_in {
                                form method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(viewer.csrf);
                                    button.link type="submit" data-action="logout" { "Log out" }
                                }
                            }
                        }
                    }
                }
                main { (body) }
                // The one confirmation dialog: `console.js` shows it for a submitted
                // `form[data-confirm]` and submits the form on "Confirm".
                dialog.confirm aria-labelledby="confirm-text" {
                    p #confirm-text .confirm-text {}
                    div.confirm-buttons {
                        button type="button" data-confirm-no { "Cancel" }
                        button.primary type="button" data-confirm-yes { "Confirm" }
                    }
                }
            }
        }
    }
}

/// A page that says what went wrong.
pub fn error_page(status: StatusCode, message: &str) -> Markup {
    shell(
        None,
        status.canonical_reason().unwrap_or("Error"),
        html! {
            section.error {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p.message { (message) }
                p { a href="/jobs" { "Back to the jobs" } }
            }
        },
    )
}

/// A value from the address, as an error message repeats it: at most 40 characters, so a
/// crafted link cannot put its own sentence on this site's page.
pub fn echo(value: &str) -> String {
    const SHOWN: usize = 40;
    match value.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_string(),
    }
}

/// A state as a coloured badge; `state` is a lowercase word (`running`, `failed`, …) and
/// picks the colour through the `state-*` class.
pub fn badge(state: &str) -> Markup {
    html! { span class={ "badge state-" (state) } data-state=(state) { (state) } }
}

/// A duration in milliseconds for people: `850 ms`, `12.3 s`, `4 m 05 s`, `2 h 03 m`.
pub fn duration(millis: i64) -> String {
    let millis = millis.max(0);
    if millis < 1_000 {
        format!("{millis} ms")
    } else if millis < 60_000 {
        format!("{:.1} s", millis as f64 / 1_000.0)
    } else if millis < 3_600_000 {
        format!("{} m {:02} s", millis / 60_000, (millis / 1_000) % 60)
    } else {
        format!("{} h {:02} m", millis / 3_600_000, (millis / 60_000) % 60)
    }
}

/// A time (milliseconds since the epoch) as `<time>`: UTC in the page, turned into the
/// browser's local time by the script.
pub fn time(millis: i64) -> Markup {
    let text = rfc3339(millis);
    html! { time datetime=(text) { (text.replace('T', " ").trim_end_matches('Z')) " UTC" } }
}

/// `2026-11-30T07:01:43.123Z`.
pub fn rfc3339(millis: i64) -> String {
    let seconds = millis.div_euclid(1_000);
    let fraction = millis.rem_euclid(1_000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:03}Z",
        of_day / 3_600,
        (of_day / 60) % 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// days-to-civil algorithm; a few lines, not worth a date crate).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_903_123), "2026-11-18T11:21:43.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_345), "12.3 s");
        assert_eq!(duration(245_000), "4 m 05 s");
        assert_eq!(duration(7_380_000), "2 h 03 m");
        assert_eq!(duration(-5), "0 ms");
    }

    #[test]
    fn echoed_values_are_short() {
        assert_eq!(echo("abc"), "abc");
        let long = "é".repeat(100);
        assert_eq!(echo(&long).chars().count(), 41);
        assert!(echo(&long).ends_with('…'));
    }

    #[test]
    fn task_written_text_is_escaped() {
        let markup = badge("<img src=x onerror=alert(1)>").into_string();
        assert!(!markup.contains("<img"), "{markup}");
        assert!(markup.contains("&lt;img"), "{markup}");
    }
}
