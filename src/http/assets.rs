//! The web app: the files Vite built into `assets/dist`, embedded in the
//! binary at compile time, served as the router's fallback.
//!
//! Called by [`crate::http::router_with_assets`] for every path the router
//! does not know. Paths under the daemon's own prefixes (`/api`, `/health`,
//! `/ready`, `/metrics`, `/openapi.json`, `/actuator`) never get the app:
//! they keep the API's problem+json 404.
//!
//! Invariants:
//! - Only files of the build are served: a request path is decoded strictly
//!   (no `..`, no encoded `/` or `\`, no NUL, only valid UTF-8, so no
//!   overlong forms) and then looked up by name in a fixed index; nothing is
//!   joined onto a filesystem path except in dev mode, which re-checks that
//!   the canonical result stays inside its directory. There is no directory
//!   listing.
//! - Bytes are compressed at build time (`scripts/compress.mjs`), never per
//!   request: `FILE.br` and `FILE.gz` sit next to `FILE` and are chosen by
//!   `Accept-Encoding`.
//! - Everything under `assets/` has a content hash in its name (Vite's
//!   `assetsDir`), so it is cached as immutable; anything else (`index.html`)
//!   is revalidated on every use (`no-cache` + `ETag`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};

use super::error::ApiError;

/// The built app, embedded (`debug-embed`: also in debug builds, so tests
/// exercise exactly what ships).
#[derive(rust_embed::RustEmbed)]
#[folder = "assets/dist/"]
struct Dist;

/// Satisfied by the built app (Vite emits only external scripts and
/// stylesheets), with no `unsafe-inline` anywhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     style-src 'self'; script-src 'self'; connect-src 'self'; font-src 'self'; \
     object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// About how many headers a file's response carries once the edge added
/// its own (request id, security headers, CORS).
const RESPONSE_HEADERS: usize = 20;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// Path prefixes that belong to the daemon, not to the app.
const RESERVED: [&str; 6] = [
    "/api",
    "/health",
    "/ready",
    "/metrics",
    "/openapi.json",
    "/actuator",
];

/// Where the app's files come from.
#[derive(Clone)]
pub struct Assets(Arc<Source>);

enum Source {
    Embedded(&'static Index),
    /// `--dev-assets DIR`: read on every request, so a rebuild shows without
    /// a restart. Identity bytes only: a `.br` left over from an earlier
    /// build must never shadow a newer file.
    Dir(PathBuf),
}

impl Assets {
    /// The files compiled into this binary.
    #[must_use]
    pub fn embedded() -> Self {
        static INDEX: OnceLock<Index> = OnceLock::new();
        Self(Arc::new(Source::Embedded(INDEX.get_or_init(Index::build))))
    }

    /// Files read from `dir` on each request (frontend development).
    #[must_use]
    pub fn dir(dir: PathBuf) -> Self {
        Self(Arc::new(Source::Dir(dir)))
    }

    /// Whether the app has an `index.html` to fall back to.
    #[must_use]
    pub fn has_index(&self) -> bool {
        match &*self.0 {
            Source::Embedded(index) => index.files.contains_key("index.html"),
            Source::Dir(dir) => dir.join("index.html").is_file(),
        }
    }
}

/// One file of the build with its precompressed variants.
struct File {
    identity: Variant,
    br: Option<Variant>,
    gzip: Option<Variant>,
    content_type: HeaderValue,
    cache_control: HeaderValue,
    html: bool,
}

struct Variant {
    bytes: Bytes,
    etag: HeaderValue,
}

/// The embedded files by name (`index.html`, `assets/index-3f2a.js`), built
/// once: requests then cost a hash lookup and no copying.
struct Index {
    files: HashMap<String, File>,
}

impl Index {
    fn build() -> Self {
        let mut files = HashMap::new();
        for name in Dist::iter() {
            if is_variant(&name) {
                continue;
            }
            let Some(file) = Dist::get(&name) else {
                continue;
            };
            let hash = hex::encode(&file.metadata.sha256_hash()[..12]);
            let variant = |suffix: &str, tag: &str| {
                Dist::get(&format!("{name}.{suffix}"))
                    .map(|f| Variant::new(f.data, etag(&hash, tag)))
            };
            let br = variant("br", "-br");
            let gzip = variant("gz", "-gz");
            files.insert(
                name.to_string(),
                File {
                    identity: Variant::new(file.data, etag(&hash, "")),
                    br,
                    gzip,
                    content_type: HeaderValue::from_static(content_type(&name)),
                    cache_control: HeaderValue::from_static(cache_control(&name)),
                    html: is_html(&name),
                },
            );
        }
        Self { files }
    }
}

impl Variant {
    fn new(data: std::borrow::Cow<'static, [u8]>, etag: HeaderValue) -> Self {
        let bytes = match data {
            std::borrow::Cow::Borrowed(bytes) => Bytes::from_static(bytes),
            std::borrow::Cow::Owned(bytes) => Bytes::from(bytes),
        };
        Self { bytes, etag }
    }
}

fn etag(hash: &str, suffix: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{hash}{suffix}\""))
        .expect("hex and quotes are a valid header")
}

/// The extension of the last segment of `name` as written, or "" (compare
/// it ignoring case).
fn extension(name: &str) -> &str {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.rsplit_once('.').map_or("", |(_, ext)| ext)
}

/// A precompressed copy, served only in place of its original.
fn is_variant(name: &str) -> bool {
    let ext = extension(name);
    ext.eq_ignore_ascii_case("br") || ext.eq_ignore_ascii_case("gz")
}

fn is_html(name: &str) -> bool {
    extension(name).eq_ignore_ascii_case("html")
}

/// Vite puts hashed files, and only those, under `assets/`.
fn cache_control(name: &str) -> &'static str {
    if name.starts_with("assets/") {
        IMMUTABLE
    } else {
        REVALIDATE
    }
}

fn content_type(name: &str) -> &'static str {
    match extension(name).to_ascii_lowercase().as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Malformed or dangerous: 400.
    BadPath,
    /// Well-formed but never a file of the app (a dotfile, a `.br`): 404.
    NotFound,
}

/// Decodes a request path into the name of a file of the build ("" for `/`).
///
/// Strict on purpose: the only way in is a plain, normalised path. Encoded
/// separators (`%2f`, `%5c`) are refused rather than decoded, because a
/// decoded `/` would let `..%2f..` pass a segment check; backslashes are
/// refused because some tools treat them as separators; the decoded bytes
/// must be UTF-8, which rules out overlong forms like `%c0%ae`.
fn file_name(raw_path: &str) -> Result<String, Refused> {
    let rest = raw_path.strip_prefix('/').ok_or(Refused::BadPath)?;
    let bytes = rest.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(Refused::BadPath)?;
            let text = std::str::from_utf8(hex).map_err(|_| Refused::BadPath)?;
            let value = u8::from_str_radix(text, 16).map_err(|_| Refused::BadPath)?;
            if value == b'/' || value == b'\\' {
                return Err(Refused::BadPath);
            }
            decoded.push(value);
            i += 3;
        } else {
            decoded.push(byte);
            i += 1;
        }
    }
    let text = String::from_utf8(decoded).map_err(|_| Refused::BadPath)?;
    if text.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(Refused::BadPath);
    }
    // One trailing slash is a client route's spelling (`/customers/`), not
    // a directory to list.
    let text = match text.strip_suffix('/') {
        Some(trimmed) => trimmed.to_string(),
        None => text,
    };
    if text.is_empty() {
        return Ok(text);
    }
    for segment in text.split('/') {
        match segment {
            "" | "." | ".." => return Err(Refused::BadPath),
            s if s.starts_with('.') => return Err(Refused::NotFound),
            _ => {}
        }
    }
    if is_variant(&text) {
        return Err(Refused::NotFound);
    }
    Ok(text)
}

/// A client route (`/customers/42`) rather than a file (`/assets/x.js`):
/// its last segment has no extension.
fn is_client_route(name: &str) -> bool {
    name.rsplit('/')
        .next()
        .is_none_or(|last| !last.contains('.'))
}

fn reserved(path: &str) -> bool {
    path.strip_prefix('/').is_some_and(reserved_name)
}

/// [`reserved`] for a path without its leading `/` (a decoded file name).
fn reserved_name(name: &str) -> bool {
    RESERVED.iter().any(|prefix| {
        name.strip_prefix(&prefix[1..])
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Brotli,
    Gzip,
    Identity,
}

/// The codings `Accept-Encoding` allows, in our order of preference (brotli
/// is smaller; quality values only say yes or no here, as in nginx).
fn accepted(headers: &HeaderMap) -> (bool, bool) {
    let (mut br, mut gzip, mut star) = (None, None, None);
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let ok = q > 0.0;
            match coding.as_str() {
                "br" => br = Some(ok),
                "gzip" | "x-gzip" => gzip = Some(ok),
                "*" => star = Some(ok),
                _ => {}
            }
        }
    }
    let star = star.unwrap_or(false);
    (br.unwrap_or(star), gzip.unwrap_or(star))
}

/// Whether `If-None-Match` names `etag` (weak comparison, RFC 9110 §13.1.2).
fn none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    headers.get_all(header::IF_NONE_MATCH).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',').any(|tag| {
                let tag = tag.trim();
                tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours
            })
        })
    })
}

/// What the fallback answers for `uri`.
pub async fn serve(assets: &Assets, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
    let path = uri.path();
    if reserved(path) {
        return ApiError::NotFound("route").into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let name = match file_name(path) {
        // `/%61pi/…` decodes to an API path: it is not the app's either.
        Ok(name) if reserved_name(&name) => {
            return ApiError::NotFound("route").into_response();
        }
        Ok(name) => name,
        Err(Refused::BadPath) => return plain(StatusCode::BAD_REQUEST, "bad request path\n"),
        Err(Refused::NotFound) => return plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    let name = if is_client_route(&name) {
        "index.html"
    } else {
        &name
    };
    let head = method == Method::HEAD;
    match &*assets.0 {
        Source::Embedded(index) => match index.files.get(name) {
            Some(file) => respond(file, headers, head),
            None => plain(StatusCode::NOT_FOUND, "not found\n"),
        },
        Source::Dir(dir) => match read_from_dir(dir, name).await {
            Some(file) => respond(&file, headers, head),
            None => plain(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

/// Dev mode: `name` (already checked by [`file_name`]) under `dir`, if it is
/// a regular file that really lies inside `dir` (no symlink out of it).
async fn read_from_dir(dir: &Path, name: &str) -> Option<File> {
    let root = tokio::fs::canonicalize(dir).await.ok()?;
    let path = tokio::fs::canonicalize(root.join(name)).await.ok()?;
    if !path.starts_with(&root) || !tokio::fs::metadata(&path).await.ok()?.is_file() {
        return None;
    }
    let bytes = tokio::fs::read(&path).await.ok()?;
    let hash = hex::encode(&Sha256::digest(&bytes)[..12]);
    Some(File {
        identity: Variant {
            bytes: Bytes::from(bytes),
            etag: etag(&hash, ""),
        },
        br: None,
        gzip: None,
        content_type: HeaderValue::from_static(content_type(name)),
        // Names may stay the same across dev builds: always revalidate.
        cache_control: HeaderValue::from_static(REVALIDATE),
        html: is_html(name),
    })
}

fn respond(file: &File, headers: &HeaderMap, head: bool) -> Response {
    let (br_ok, gzip_ok) = accepted(headers);
    let (variant, encoding) = match (&file.br, &file.gzip) {
        (Some(br), _) if br_ok => (br, Encoding::Brotli),
        (_, Some(gzip)) if gzip_ok => (gzip, Encoding::Gzip),
        _ => (&file.identity, Encoding::Identity),
    };
    let not_modified = none_match(headers, &variant.etag);
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else if head {
        let mut response = Response::new(Body::empty());
        response.headers_mut().insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(variant.bytes.len()),
        );
        response
    } else {
        Response::new(Body::from(variant.bytes.clone()))
    };
    let out = response.headers_mut();
    // Room for these and the edge's headers at once, instead of growing
    // the map on the way.
    out.reserve(RESPONSE_HEADERS);
    out.insert(header::ETAG, variant.etag.clone());
    out.insert(header::CACHE_CONTROL, file.cache_control.clone());
    out.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !not_modified {
        out.insert(header::CONTENT_TYPE, file.content_type.clone());
        match encoding {
            Encoding::Brotli => {
                out.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
            }
            Encoding::Gzip => {
                out.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            Encoding::Identity => {}
        }
    }
    if file.html {
        out.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        out.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        out.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut response = (status, text).into_response();
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(REVALIDATE));
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, Response, StatusCode};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::health::Health;
    use crate::http::{AppState, router_with_assets};

    fn app(assets: Assets) -> axum::Router {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let health = Health::new(rx, std::env::temp_dir(), 0, None);
        router_with_assets(
            AppState {
                health,
                api: crate::http::tests::api_state(),
                edge: crate::http::edge::Edge::new(&crate::config::ServerConfig::default()),
                metrics: None,
            },
            assets,
        )
    }

    async fn send(assets: Assets, req: Request<Body>) -> (Response<Body>, Bytes) {
        let res = app(assets).oneshot(req).await.expect("response");
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (Response::from_parts(parts, Body::empty()), bytes)
    }

    async fn get(path: &str, headers: &[(&str, &str)]) -> (Response<Body>, Bytes) {
        let mut req = Request::get(path);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        send(
            Assets::embedded(),
            req.body(Body::empty()).expect("request"),
        )
        .await
    }

    fn header<'a>(res: &'a Response<Body>, name: &str) -> &'a str {
        res.headers()
            .get(name)
            .map_or("", |v| v.to_str().expect("ascii header"))
    }

    /// The build's main script, e.g. `assets/index-3f2a9c.js`.
    fn embedded(ext: &str) -> String {
        Dist::iter()
            .map(|n| n.to_string())
            .find(|n| n.starts_with("assets/") && n.ends_with(ext))
            .unwrap_or_else(|| panic!("the build has an assets/*{ext}"))
    }

    fn dist(name: &str) -> Vec<u8> {
        Dist::get(name).expect("embedded").data.into_owned()
    }

    #[tokio::test]
    async fn brotli_then_gzip_then_identity_by_accept_encoding() {
        let js = embedded(".js");
        let path = format!("/{js}");
        for (accept, encoding, file) in [
            ("gzip, deflate, br", "br", format!("{js}.br")),
            ("br;q=0.5, gzip;q=1", "br", format!("{js}.br")),
            ("gzip", "gzip", format!("{js}.gz")),
            ("x-gzip", "gzip", format!("{js}.gz")),
            ("br;q=0, gzip", "gzip", format!("{js}.gz")),
            ("*", "br", format!("{js}.br")),
            ("*, br;q=0", "gzip", format!("{js}.gz")),
            ("identity", "", js.clone()),
            ("br;q=0, gzip;q=0", "", js.clone()),
            ("", "", js.clone()),
        ] {
            let headers: &[(&str, &str)] = if accept.is_empty() {
                &[]
            } else {
                &[("accept-encoding", accept)]
            };
            let (res, body) = get(&path, headers).await;
            assert_eq!(res.status(), 200, "{accept}");
            assert_eq!(header(&res, "content-encoding"), encoding, "{accept}");
            assert_eq!(header(&res, "vary"), "Accept-Encoding", "{accept}");
            assert_eq!(
                header(&res, "content-type"),
                "text/javascript; charset=utf-8"
            );
            assert_eq!(
                body.as_ref(),
                dist(&file).as_slice(),
                "{accept}: bytes of {file}"
            );
        }
    }

    #[tokio::test]
    async fn a_matching_etag_is_304_and_each_encoding_has_its_own() {
        let path = format!("/{}", embedded(".js"));
        let (br, _) = get(&path, &[("accept-encoding", "br")]).await;
        let (gz, _) = get(&path, &[("accept-encoding", "gzip")]).await;
        let (plain, _) = get(&path, &[]).await;
        let tags = [
            header(&br, "etag"),
            header(&gz, "etag"),
            header(&plain, "etag"),
        ];
        assert!(
            tags.iter().all(|t| t.starts_with('"') && t.len() > 2),
            "{tags:?}"
        );
        assert!(
            tags[0] != tags[1] && tags[1] != tags[2] && tags[0] != tags[2],
            "{tags:?}"
        );

        for sent in [
            tags[0].to_string(),
            format!("W/{}", tags[0]),
            format!("\"x\", {}", tags[0]),
            "*".into(),
        ] {
            let (res, body) = get(
                &path,
                &[("accept-encoding", "br"), ("if-none-match", &sent)],
            )
            .await;
            assert_eq!(res.status(), StatusCode::NOT_MODIFIED, "{sent}");
            assert!(body.is_empty());
            assert_eq!(header(&res, "etag"), tags[0]);
            assert_eq!(header(&res, "vary"), "Accept-Encoding");
            assert_eq!(header(&res, "cache-control"), IMMUTABLE);
        }
        // The gzip representation's tag does not validate the brotli one.
        let (res, _) = get(
            &path,
            &[("accept-encoding", "br"), ("if-none-match", tags[1])],
        )
        .await;
        assert_eq!(res.status(), 200);
        let (res, _) = get("/", &[("if-none-match", "\"stale\"")]).await;
        assert_eq!(res.status(), 200);
        let (index, _) = get("/", &[("accept-encoding", "gzip")]).await;
        let (res, _) = get(
            "/customers",
            &[
                ("accept-encoding", "gzip"),
                ("if-none-match", header(&index, "etag")),
            ],
        )
        .await;
        assert_eq!(
            res.status(),
            StatusCode::NOT_MODIFIED,
            "a client route revalidates index.html"
        );
    }

    #[tokio::test]
    async fn hashed_files_are_immutable_and_index_html_is_revalidated() {
        for path in [
            format!("/{}", embedded(".js")),
            format!("/{}", embedded(".css")),
        ] {
            let (res, _) = get(&path, &[]).await;
            assert_eq!(header(&res, "cache-control"), IMMUTABLE, "{path}");
        }
        for path in ["/", "/index.html", "/customers/42", "/system"] {
            let (res, _) = get(path, &[]).await;
            assert_eq!(res.status(), 200, "{path}");
            assert_eq!(header(&res, "cache-control"), "no-cache", "{path}");
        }
    }

    #[tokio::test]
    async fn client_routes_get_index_html_and_missing_files_get_404() {
        let index = dist("index.html");
        for path in [
            "/",
            "/customers",
            "/customers/",
            "/customers/0b6c1f4e-3f1a-4e55-9d1e-6d1e2c3b4a59",
            "/pipeline",
            "/login?next=%2Fsystem",
            "/assets",
        ] {
            let (res, body) = get(path, &[]).await;
            assert_eq!(res.status(), 200, "{path}");
            assert_eq!(
                header(&res, "content-type"),
                "text/html; charset=utf-8",
                "{path}"
            );
            assert_eq!(body.as_ref(), index.as_slice(), "{path}");
        }
        for path in [
            "/assets/missing-abc123.js",
            "/favicon.ico",
            "/robots.txt",
            "/customers/x.json",
        ] {
            let (res, _) = get(path, &[]).await;
            assert_eq!(
                res.status(),
                404,
                "{path}: a file that is not there is not the app"
            );
            assert_eq!(header(&res, "content-type"), "text/plain; charset=utf-8");
        }
    }

    #[tokio::test]
    async fn index_html_links_only_files_that_are_served() {
        let (_, body) = get("/", &[]).await;
        let html = String::from_utf8(body.to_vec()).expect("utf-8");
        let links: Vec<&str> = html
            .split(['"', '\''])
            .filter(|s| s.starts_with("/assets/"))
            .collect();
        assert!(links.len() >= 2, "a script and a stylesheet: {links:?}");
        for link in links {
            let (res, _) = get(link, &[("accept-encoding", "br")]).await;
            assert_eq!(res.status(), 200, "{link}");
        }
    }

    #[tokio::test]
    async fn content_types_follow_the_extension() {
        for (path, expected) in [
            (
                format!("/{}", embedded(".js")),
                "text/javascript; charset=utf-8",
            ),
            (format!("/{}", embedded(".css")), "text/css; charset=utf-8"),
            ("/index.html".to_string(), "text/html; charset=utf-8"),
        ] {
            let (res, _) = get(&path, &[("accept-encoding", "br, gzip")]).await;
            assert_eq!(header(&res, "content-type"), expected, "{path}");
            assert_eq!(header(&res, "x-content-type-options"), "nosniff", "{path}");
        }
        for (name, expected) in [
            ("a.svg", "image/svg+xml"),
            ("a.woff2", "font/woff2"),
            ("a.json", "application/json"),
            ("a.PNG", "image/png"),
            ("a", "application/octet-stream"),
            ("a.exe", "application/octet-stream"),
        ] {
            assert_eq!(content_type(name), expected, "{name}");
        }
    }

    #[tokio::test]
    async fn html_carries_a_strict_csp_and_other_files_do_not_need_one() {
        for path in ["/", "/customers/1"] {
            let (res, _) = get(path, &[]).await;
            let csp = header(&res, "content-security-policy");
            assert_eq!(csp, CONTENT_SECURITY_POLICY, "{path}");
            assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
            assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
            assert_eq!(header(&res, "x-frame-options"), "DENY");
            assert_eq!(header(&res, "x-content-type-options"), "nosniff");
        }
        // Other files get the edge's strictest default (a CSP governs
        // documents, not the scripts they load, so it cannot break them).
        let (res, _) = get(&format!("/{}", embedded(".js")), &[]).await;
        assert_eq!(
            header(&res, "content-security-policy"),
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
        );
    }

    #[tokio::test]
    async fn the_built_html_has_no_inline_script_or_style() {
        let html = String::from_utf8(dist("index.html")).expect("utf-8");
        assert!(
            !html.contains("<style"),
            "inline <style> breaks style-src 'self'"
        );
        assert!(
            !html.contains(" style="),
            "style attributes break style-src 'self'"
        );
        for script in html.split("<script").skip(1) {
            let tag = script.split('>').next().unwrap_or("");
            assert!(
                tag.contains("src="),
                "inline <script> breaks script-src 'self': {tag}"
            );
        }
    }

    #[tokio::test]
    async fn path_escapes_are_refused() {
        for (path, status) in [
            // dot segments, plain and encoded
            ("/../etc/passwd", 400),
            ("/assets/../index.html", 400),
            ("/%2e%2e/etc/passwd", 400),
            ("/assets/%2E%2E/%2e%2e/secrets", 400),
            ("/./index.html", 400),
            // encoded slashes and backslashes
            ("/..%2f..%2fetc%2fpasswd", 400),
            ("/assets%2Findex.html", 400),
            ("/..%5c..%5cwindows", 400),
            ("/assets%5Cindex.html", 400),
            // NUL and other control bytes
            ("/index.html%00.js", 400),
            ("/%00", 400),
            ("/a%0ab", 400),
            // overlong and otherwise invalid UTF-8
            ("/%c0%ae%c0%ae/etc/passwd", 400),
            ("/%c0%af", 400),
            ("/%e0%80%ae", 400),
            ("/%ff", 400),
            // broken escapes and empty segments
            ("/%zz", 400),
            ("/index.html%", 400),
            ("/assets//x.js", 400),
            // never files of the app
            ("/.env", 404),
            ("/assets/.hidden", 404),
            ("/index.html.br", 404),
            ("/index.html.gz", 404),
            ("/index.html.BR", 404),
        ] {
            let (res, body) = get(path, &[]).await;
            assert_eq!(res.status().as_u16(), status, "{path}");
            assert!(!body.starts_with(b"<!doctype"), "{path} served the app");
        }
    }

    #[test]
    fn file_names_are_decoded_strictly() {
        #[track_caller]
        fn check(path: &str, expected: Result<&str, Refused>) {
            assert_eq!(
                file_name(path).as_deref(),
                expected.as_ref().map(|s| *s),
                "{path}"
            );
        }
        check("/", Ok(""));
        check("/index.html", Ok("index.html"));
        check("/customers/", Ok("customers"));
        check("/caf%C3%A9", Ok("café"));
        check("/a%20b", Ok("a b"));
        check("/a\\b", Err(Refused::BadPath));
        check("relative", Err(Refused::BadPath));
        check("/%2e%2e", Err(Refused::BadPath));
        check("/%c0%ae", Err(Refused::BadPath));
        check("/..", Err(Refused::BadPath));
        check("/.well-known/x", Err(Refused::NotFound));
    }

    #[tokio::test]
    async fn the_daemons_own_prefixes_keep_their_problem_404() {
        for path in [
            "/api",
            "/api/v1/nope",
            "/metrics",
            "/actuator/prometheus",
            "/health/x",
            "/ready/",
            "/openapi.json/x",
            "/%61pi/v1/x",
        ] {
            let (res, _) = get(path, &[]).await;
            assert_eq!(res.status(), 404, "{path}");
            assert_eq!(
                header(&res, "content-type"),
                "application/problem+json",
                "{path}"
            );
        }
        for path in ["/apiary", "/healthy", "/readyness"] {
            let (res, _) = get(path, &[]).await;
            assert_eq!(
                header(&res, "content-type"),
                "text/html; charset=utf-8",
                "{path} is a client route"
            );
        }
    }

    #[tokio::test]
    async fn head_has_headers_and_no_body_and_other_methods_are_refused() {
        let path = format!("/{}", embedded(".js"));
        let req = Request::head(&path)
            .header("accept-encoding", "br")
            .body(Body::empty())
            .expect("request");
        let (res, body) = send(Assets::embedded(), req).await;
        assert_eq!(res.status(), 200);
        assert!(body.is_empty());
        let js = embedded(".js");
        assert_eq!(
            header(&res, "content-length"),
            dist(&format!("{js}.br")).len().to_string()
        );
        assert_eq!(header(&res, "content-encoding"), "br");

        let req = Request::post("/customers")
            .body(Body::empty())
            .expect("request");
        let (res, _) = send(Assets::embedded(), req).await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header(&res, "allow"), "GET, HEAD");
    }

    #[tokio::test]
    async fn dev_mode_reads_each_file_on_every_request_and_stays_in_its_dir() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("dist");
        std::fs::create_dir_all(dir.join("assets")).expect("mkdir");
        std::fs::write(dir.join("index.html"), "<!doctype html>one").expect("write");
        std::fs::write(dir.join("assets/app-1.js"), "one()").expect("write");
        std::fs::write(dir.join("assets/app-1.js.br"), "stale").expect("write");
        std::fs::write(root.path().join("secret.txt"), "secret").expect("write");
        std::os::unix::fs::symlink(root.path().join("secret.txt"), dir.join("link.txt"))
            .expect("symlink");
        let assets = Assets::dir(dir.clone());
        assert!(assets.has_index());

        let fetch = |path: &'static str| {
            let assets = assets.clone();
            async move {
                let req = Request::get(path)
                    .header("accept-encoding", "br, gzip")
                    .body(Body::empty())
                    .expect("request");
                send(assets, req).await
            }
        };
        let (res, body) = fetch("/customers").await;
        assert_eq!(body.as_ref(), b"<!doctype html>one");
        assert_eq!(
            header(&res, "content-security-policy"),
            CONTENT_SECURITY_POLICY
        );
        let first_tag = header(&res, "etag").to_string();

        std::fs::write(dir.join("index.html"), "<!doctype html>two").expect("write");
        let (res, body) = fetch("/customers").await;
        assert_eq!(
            body.as_ref(),
            b"<!doctype html>two",
            "changed on disk, no restart"
        );
        assert_ne!(header(&res, "etag"), first_tag);

        let (res, body) = fetch("/assets/app-1.js").await;
        assert_eq!(
            body.as_ref(),
            b"one()",
            "identity only: a stale .br never shadows the file"
        );
        assert_eq!(header(&res, "content-encoding"), "");
        assert_eq!(header(&res, "cache-control"), "no-cache");

        let (res, _) = fetch("/link.txt").await;
        assert_eq!(res.status(), 404, "a symlink out of the dir is not served");
        let (res, _) = fetch("/..%2fsecret.txt").await;
        assert_eq!(res.status(), 400);
        let (res, _) = fetch("/assets/missing.js").await;
        assert_eq!(res.status(), 404);
        assert!(!Assets::dir(root.path().join("nope")).has_index());
    }
}
