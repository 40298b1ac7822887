//! Verifying a push independently of the engine: the manifest of the tag is fetched back with
//! oci-client, and its bytes, the registry's `Docker-Content-Digest`, the engine's digest and
//! the image ID must all agree (see the module docs of [`crate::image`]).

use anyhow::{Context, bail};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use std::time::Duration;

use super::retry::{Failure, with_retries};
use super::{Verified, error_chain, login, parse_reference};
use crate::config::RegistryConfig;

/// How long [`verify`] waits for a TCP connection to the registry. A blackholed registry
/// would otherwise hold each attempt for the OS's connect timeout (minutes).
const REGISTRY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`verify`] waits for the registry's answer once connected; a manifest is a few KiB.
const REGISTRY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The manifest types [`verify`] accepts, OCI and Docker alike. All four must be offered: a
/// registry that finds none of the pushed manifest's type in `Accept` may convert it (to
/// schema 1) or refuse, and a converted manifest has other bytes and so another digest.
const MANIFEST_TYPES: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// Fetches the manifest of `reference` back from the registry, independently of the engine,
/// and checks it against what the engine built and pushed (see the module docs of
/// [`crate::image`]).
///
/// Uses oci-client's `pull_manifest_raw`: it returns the exact bytes received and the
/// registry's `Docker-Content-Digest`, which it has already checked against the sha256 of
/// those bytes (a registry serving bytes that do not hash to its own header is an error, which
/// is reported here as such). When a registry sends no header at all, oci-client returns the
/// sha256 of the bytes instead; the decisive comparison (bytes against the engine's digest)
/// holds either way, so no hand-made HTTP request is needed.
///
/// Plain HTTP only when the registry's entry says `insecure`, or when there is no entry and the
/// registry is on loopback.
pub async fn verify(
    reference: &str,
    registry: Option<&RegistryConfig>,
    engine_digest: &str,
    image_id: &str,
) -> anyhow::Result<Verified> {
    let (host, path, tag) = parse_reference(reference)?;
    let client = registry_client(&host, registry)?;
    let auth = match registry.and_then(login) {
        Some((username, password)) => {
            RegistryAuth::Basic(username.to_string(), password.to_string())
        }
        None => RegistryAuth::Anonymous,
    };
    let oci_ref = Reference::with_tag(host.clone(), path, tag);

    let attempt = || async {
        client
            .pull_manifest_raw(&oci_ref, &auth, MANIFEST_TYPES)
            .await
            .map_err(|e| Failure::from_oci(e, reference, &host))
    };
    let (bytes, header_digest) = with_retries(&host, registry, None, attempt).await?;

    let manifest_digest = check_digests(&bytes, &header_digest, engine_digest, reference, &host)?;
    let config_digest = check_config(&bytes, &manifest_digest, image_id, reference)?;
    Ok(Verified {
        manifest_digest,
        config_digest,
        size: bytes.len() as u64,
    })
}

/// An oci-client for `host`, speaking plain HTTP only when allowed (see [`verify`]), with
/// short timeouts.
fn registry_client(host: &str, registry: Option<&RegistryConfig>) -> anyhow::Result<Client> {
    let insecure = match registry {
        Some(r) => r.insecure,
        None => is_loopback(host),
    };
    let config = ClientConfig {
        // oci-client compares the exception list with the reference's registry exactly,
        // port included ("10.203.0.1:5000"); a bare host would silently mean HTTPS.
        protocol: if insecure {
            ClientProtocol::HttpsExcept(vec![host.to_string()])
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(REGISTRY_CONNECT_TIMEOUT),
        read_timeout: Some(REGISTRY_READ_TIMEOUT),
        // An index is reported, not resolved to "this machine's platform": the engine pushed
        // one image, and that is what must be there.
        platform_resolver: None,
        ..Default::default()
    };
    // `Client::new` would fall back to a default (HTTPS-only) client on a config error.
    Client::try_from(config).context("cannot set up the registry client")
}

/// Requires sha256(`bytes`) = the registry's digest header = the engine's digest, and returns
/// that digest.
fn check_digests(
    bytes: &[u8],
    header_digest: &str,
    engine_digest: &str,
    reference: &str,
    host: &str,
) -> anyhow::Result<String> {
    let computed = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if header_digest != computed {
        bail!(
            "the registry {host} says the manifest of {reference} is {header_digest} but serves bytes hashing to {computed}; nothing from this run deploys"
        );
    }
    if computed != engine_digest {
        bail!(
            "the registry holds {computed} for {reference} but the engine pushed {engine_digest}; nothing from this run deploys"
        );
    }
    Ok(computed)
}

/// Requires the manifest `bytes` (whose digest is `computed`) to be a single image whose config
/// digest is `image_id`, and returns that config digest.
fn check_config(
    bytes: &[u8],
    computed: &str,
    image_id: &str,
    reference: &str,
) -> anyhow::Result<String> {
    let manifest: serde_json::Value = serde_json::from_slice(bytes)
        .with_context(|| format!("the manifest {computed} of {reference} is not JSON"))?;
    if manifest.get("manifests").is_some() {
        bail!(
            "the registry holds an image index {computed} for {reference}, not the single image the engine built ({image_id}); nothing from this run deploys"
        );
    }
    let config_digest = manifest
        .pointer("/config/digest")
        .and_then(|d| d.as_str())
        .with_context(|| format!("the manifest {computed} of {reference} names no config"))?
        .to_string();
    if config_digest != image_id {
        bail!(
            "the manifest {computed} of {reference} names the image {config_digest} but the engine built {image_id}; nothing from this run deploys"
        );
    }
    Ok(config_digest)
}

/// `127.0.0.1[:port]`, `localhost[:port]`, `[::1][:port]`: a registry only this machine reaches.
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Failure {
    /// Sorts an oci-client error; `reference` and `host` name what was fetched, for the message.
    fn from_oci(e: OciDistributionError, reference: &str, host: &str) -> Failure {
        let chain = error_chain(&e);
        // rustls meeting a plain-HTTP answer: a config mistake, not an outage; say which.
        if chain.contains("InvalidContentType") || chain.contains("corrupt message") {
            return Failure::Other(format!(
                "the registry {host} answers plain HTTP, not HTTPS: if that is intended (lab or loopback only), set insecure = true in its [[registry]] entry ({chain})"
            ));
        }
        match e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => Failure::Credentials(e.to_string()),
            OciDistributionError::ServerError { code, .. } if code >= 500 => {
                Failure::Unavailable(e.to_string())
            }
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => Failure::Credentials(e.to_string()),
            OciDistributionError::RequestError(ref r)
                if r.is_connect() || r.is_timeout() || r.is_request() || r.is_body() =>
            {
                // reqwest's own Display stops at "error sending request"; the cause says why.
                Failure::Unavailable(chain)
            }
            OciDistributionError::RegistryError { ref envelope, .. } => {
                let codes: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}", e.code))
                    .collect();
                let text = format!("{chain} ({})", codes.join(", "));
                if codes.iter().any(|c| c == "Unauthorized" || c == "Denied") {
                    Failure::Credentials(text)
                } else if codes
                    .iter()
                    .any(|c| c == "ManifestUnknown" || c == "NameUnknown")
                {
                    Failure::Other(format!(
                        "the registry has no manifest for {reference}: {text}"
                    ))
                } else {
                    Failure::Other(text)
                }
            }
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => Failure::Other(format!(
                "the registry says the manifest of {reference} is {expected} but serves bytes hashing to {actual}; nothing from this run deploys"
            )),
            _ => Failure::Other(chain),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("10.203.0.1:5000"));
        assert!(!is_loopback("registry.example.com"));
    }
}
