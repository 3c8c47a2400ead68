//! The release feed: a GitHub-style `GET <feed>/repos/<owner>/<name>/releases`
//! and the asset downloads, both through `self_update::Download` (blocking:
//! callers run these on a blocking thread).
//!
//! The list is parsed here rather than with `self_update`'s `ReleaseList`,
//! which drops what the channel needs: the feed's `prerelease` and `draft`
//! flags. It also skips a non-semver tag silently, where we log a warning so a
//! mistagged release is noticed.

use std::io::Write as _;
use std::time::Duration;

use serde::Deserialize;
use tracing::warn;

use super::{Available, Error, Release, current_version};
use crate::config::{UpdateChannel, UpdateConfig};

/// Bounds for a lying or stuck server: the list is small, the archive is
/// tens of MB.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
const LIST_MAX_BYTES: u64 = 16 << 20;
const ASSET_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const ASSET_MAX_BYTES: u64 = 1 << 30;

#[derive(Debug, Deserialize)]
struct ReleaseDto {
    tag_name: String,
    #[serde(default)]
    prerelease: bool,
    #[serde(default)]
    draft: bool,
    body: Option<String>,
    #[serde(default)]
    assets: Vec<AssetDto>,
}

#[derive(Debug, Deserialize)]
struct AssetDto {
    name: String,
    /// A plain download URL (github.com/…/releases/download/…); a static
    /// mirror has only this one.
    browser_download_url: Option<String>,
    /// The API's asset URL, which serves the file with `Accept:
    /// application/octet-stream`.
    url: Option<String>,
}

/// `<feed>/repos/<owner>/<name>/releases`.
pub fn releases_url(cfg: &UpdateConfig) -> String {
    format!(
        "{}/repos/{}/releases",
        cfg.feed.trim_end_matches('/'),
        cfg.repo
    )
}

/// `-x86_64-linux.tar.gz` on this machine: what `packaging/build-release.sh`
/// names its archive after the version.
pub fn asset_suffix() -> String {
    format!("-{}-linux.tar.gz", std::env::consts::ARCH)
}

/// The archive's name for `version`, which is also its signature's context.
pub fn asset_name(version: &semver::Version) -> String {
    format!("pagodirecto-{version}{}", asset_suffix())
}

/// Reads the feed and picks the newest release on the channel.
pub fn releases(cfg: &UpdateConfig) -> Result<Available, Error> {
    let url = releases_url(cfg);
    // GitHub lists newest first, 30 a page by default; 100 is its maximum
    // and more than the releases that could be newer than us.
    let mut body = Vec::new();
    self_update::Download::from_url(format!("{url}?per_page=100"))
        .request_header("accept", "application/vnd.github+json")
        .request_header(
            "user-agent",
            concat!("pagodirecto/", env!("PAGODIRECTO_VERSION")),
        )
        .timeout(LIST_TIMEOUT)
        .max_download_size(LIST_MAX_BYTES)
        .download_to(&mut body)
        .map_err(|source| Error::Feed {
            url: url.clone(),
            source,
        })?;
    let list: Vec<ReleaseDto> =
        serde_json::from_slice(&body).map_err(|source| Error::FeedFormat {
            url: url.clone(),
            source,
        })?;
    let current = current_version();
    Ok(Available {
        latest: select(list, cfg.channel),
        current,
    })
}

/// The newest usable release for `channel`: not a draft, a semver tag,
/// an archive for this platform, and no pre-release on `stable`.
fn select(list: Vec<ReleaseDto>, channel: UpdateChannel) -> Option<Release> {
    let mut best: Option<Release> = None;
    for dto in list {
        if dto.draft {
            continue;
        }
        let Ok(version) = semver::Version::parse(dto.tag_name.trim_start_matches('v')) else {
            warn!(tag = %dto.tag_name, "skipping a release whose tag is not a semantic version (v1.2.3)");
            continue;
        };
        let prerelease = dto.prerelease || !version.pre.is_empty();
        if prerelease && channel == UpdateChannel::Stable {
            continue;
        }
        if best.as_ref().is_some_and(|b| b.version >= version) {
            continue;
        }
        let wanted = asset_name(&version);
        let Some(asset) = dto.assets.into_iter().find(|a| a.name == wanted) else {
            warn!(tag = %dto.tag_name, asset = %wanted, "skipping a release without an archive for this platform");
            continue;
        };
        let Some(asset_url) = asset.browser_download_url.or(asset.url) else {
            warn!(tag = %dto.tag_name, asset = %wanted, "skipping a release whose archive has no URL");
            continue;
        };
        best = Some(Release {
            version,
            tag: dto.tag_name,
            prerelease,
            asset_name: wanted,
            asset_url,
            notes: dto.body.filter(|b| !b.trim().is_empty()),
        });
    }
    best
}

/// Downloads `release`'s archive into `file` (a temp file beside the
/// executable) and fsyncs it.
pub fn download(release: &Release, file: &mut std::fs::File) -> Result<(), Error> {
    let err = |source| Error::Download {
        asset: release.asset_name.clone(),
        url: release.asset_url.clone(),
        source,
    };
    self_update::Download::from_url(&release.asset_url)
        .request_header("accept", "application/octet-stream")
        .request_header(
            "user-agent",
            concat!("pagodirecto/", env!("PAGODIRECTO_VERSION")),
        )
        .timeout(ASSET_TIMEOUT)
        .max_download_size(ASSET_MAX_BYTES)
        .download_to(&mut *file)
        .map_err(err)?;
    file.flush()
        .and_then(|()| file.sync_all())
        .map_err(|e| err(self_update::Error::Io(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(json: serde_json::Value) -> Vec<ReleaseDto> {
        serde_json::from_value(json).expect("release list")
    }

    fn release(tag: &str, prerelease: bool) -> serde_json::Value {
        let version = tag.trim_start_matches('v');
        serde_json::json!({
            "tag_name": tag,
            "prerelease": prerelease,
            "draft": false,
            "body": format!("notes for {tag}"),
            "assets": [
                { "name": format!("pagodirecto-{version}-x86_64-linux.deb"), "browser_download_url": "http://x/deb" },
                { "name": asset_name(&semver::Version::parse(version).expect("semver")),
                  "browser_download_url": format!("http://x/{tag}.tar.gz"),
                  "url": "http://x/api/assets/1" },
            ],
        })
    }

    #[track_caller]
    fn check(releases: &[serde_json::Value], channel: UpdateChannel, expected: Option<&str>) {
        let picked = select(list(serde_json::Value::from(releases.to_vec())), channel);
        assert_eq!(picked.map(|r| r.tag).as_deref(), expected);
    }

    #[test]
    fn the_channel_decides_which_releases_count() {
        use UpdateChannel::{Beta, Stable};
        let flagged = release("v0.4.0", true);
        let pre = release("v0.3.0-beta.1", false);
        let stable = release("v0.2.0", false);
        let old = release("v0.1.0", false);
        check(
            &[flagged.clone(), pre.clone(), stable.clone(), old.clone()],
            Stable,
            Some("v0.2.0"),
        );
        check(
            &[flagged.clone(), pre.clone(), stable.clone()],
            Beta,
            Some("v0.4.0"),
        );
        check(&[pre.clone(), stable.clone()], Beta, Some("v0.3.0-beta.1"));
        // Newest by version, not by position in the list.
        check(&[old.clone(), stable.clone()], Stable, Some("v0.2.0"));
        check(&[flagged, pre], Stable, None);
        check(&[], Stable, None);
    }

    #[test]
    fn drafts_bad_tags_and_releases_without_our_archive_are_skipped() {
        let mut draft = release("v0.9.0", false);
        draft["draft"] = true.into();
        let nightly = serde_json::json!({ "tag_name": "nightly", "assets": [] });
        let mut no_asset = release("v0.8.0", false);
        no_asset["assets"] =
            serde_json::json!([{ "name": "pagodirecto-0.8.0-aarch64-linux.tar.gz", "url": "u" }]);
        let good = release("0.2.0", false);
        check(
            &[draft, nightly, no_asset, good],
            UpdateChannel::Stable,
            Some("0.2.0"),
        );
    }

    #[test]
    fn a_release_carries_its_archive_and_notes() {
        let picked = select(
            list(serde_json::json!([release("v1.2.3", false)])),
            UpdateChannel::Stable,
        )
        .expect("picked");
        assert_eq!(picked.version, semver::Version::new(1, 2, 3));
        assert_eq!(
            picked.asset_name,
            format!("pagodirecto-1.2.3-{}-linux.tar.gz", std::env::consts::ARCH)
        );
        assert_eq!(picked.asset_url, "http://x/v1.2.3.tar.gz");
        assert_eq!(picked.notes.as_deref(), Some("notes for v1.2.3"));
        assert!(!picked.prerelease);
    }

    #[test]
    fn the_list_url_is_under_the_feed() {
        let cfg = UpdateConfig {
            feed: "http://127.0.0.1:9/api/".into(),
            repo: "acme/pd".into(),
            ..UpdateConfig::default()
        };
        assert_eq!(
            releases_url(&cfg),
            "http://127.0.0.1:9/api/repos/acme/pd/releases"
        );
    }
}
