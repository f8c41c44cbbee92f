//! The console's stylesheet, script and icon, built into the binary (no CDN, no network at
//! run time) and served under content-hashed names, so browsers may keep them forever and
//! a new binary's files are fetched anew. They hold no user data.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
pub struct Asset {
    content_type: &'static str,
    body: &'static str,
    /// `/assets/<stem>.<first 8 bytes of the SHA-256, hex>.<extension>`
    url: LazyLock<String>,
}

impl Asset {
    /// Where pages link to it.
    pub fn url(&self) -> &str {
        &self.url
    }
}

macro_rules! asset {
    ($stem:literal, $extension:literal, $content_type:literal) => {
        Asset {
            content_type: $content_type,
            body: include_str!(concat!("assets/", $stem, ".", $extension)),
            url: LazyLock::new(|| {
                hashed_url(
                    $stem,
                    $extension,
                    include_str!(concat!("assets/", $stem, ".", $extension)),
                )
            }),
        }
    };
}

pub static STYLESHEET: Asset = asset!("console", "css", "text/css; charset=utf-8");
pub static SCRIPT: Asset = asset!("console", "js", "text/javascript; charset=utf-8");
pub static FAVICON: Asset = asset!("favicon", "svg", "image/svg+xml");

static ALL: [&Asset; 3] = [&STYLESHEET, &SCRIPT, &FAVICON];

fn hashed_url(stem: &str, extension: &str, body: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(body.as_bytes());
    format!("/assets/{stem}.{}.{extension}", hex::encode(&digest[..8]))
}

/// `GET /assets/{file}`: the embedded files, by their hashed names only; and
/// `/favicon.ico`, which browsers ask for on pages without an icon link (error pages):
/// a temporary redirect, since the icon's hashed name changes with the binary.
pub fn router() -> axum::Router {
    axum::Router::new()
        .route("/assets/{file}", get(serve))
        .route(
            "/favicon.ico",
            get(|| async { axum::response::Redirect::temporary(FAVICON.url()) }),
        )
}

async fn serve(Path(file): Path<String>) -> Response {
    let Some(asset) = ALL
        .iter()
        .find(|asset| asset.url().strip_prefix("/assets/") == Some(file.as_str()))
    else {
        return (StatusCode::NOT_FOUND, "no such console asset").into_response();
    };
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_urls_carry_their_content_hash() {
        assert!(SCRIPT.url().starts_with("/assets/console."));
        assert!(SCRIPT.url().ends_with(".js"));
        assert_eq!(
            SCRIPT.url().len(),
            "/assets/console.".len() + 16 + ".js".len()
        );
        assert_ne!(STYLESHEET.url(), SCRIPT.url());
    }
}
