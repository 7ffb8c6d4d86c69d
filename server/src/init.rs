//! The data directory: first-start initialisation, keys, certificates and the owner token.
//!
//! Layout of `DATA_DIR`:
//!
//! | file | what |
//! |---|---|
//! | `tallyd.lock` | locked (`flock`) by the running daemon, holding its pid |
//! | `tally.db` | the SQLite store (when `database` is not set), mode 0600 like its `-wal` and `-shm` |
//! | `signing.key` | the Ed25519 key that signs borrow tokens (PKCS#8) |
//! | `tls/` | mode 0700 |
//! | `tls/ca.pem`, `tls/ca.key` | the private CA, when the config names no certificate |
//! | `tls/server.pem`, `tls/server.key` | the server certificate that CA signed |
//! | `tls/signing.pem` | the certificate that CA issued for the signing key |
//! | `signing.csr` | with `tls.cert` set and no `borrow.signing_cert`: a request for one |
//! | `owner.token` | the owner's token (mode 0600) |
//! | `client.toml` | a client configuration for the owner (mode 0600) |

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{bail, Context, Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::Config;

/// The extended key usage a borrow signing certificate carries (or may leave out): code
/// signing, 1.3.6.1.5.5.7.3.3, the usage for keys that sign data rather than TLS sessions.
/// The client requires it when the certificate lists any usage, so the CA's TLS server
/// certificates cannot pass as borrow signers.
pub const BORROW_SIGNING_EKU: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// The owner account made at first start.
pub const OWNER_USERNAME: &str = "owner@localhost";

/// Paths inside the data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    pub fn signing_key(&self) -> PathBuf {
        self.root.join("signing.key")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("tls/ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("tls/ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("tls/server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.root.join("tls/server.key")
    }
    pub fn signing_cert(&self) -> PathBuf {
        self.root.join("tls/signing.pem")
    }
    pub fn signing_csr(&self) -> PathBuf {
        self.root.join("signing.csr")
    }
    pub fn owner_token(&self) -> PathBuf {
        self.root.join("owner.token")
    }
    pub fn client_config(&self) -> PathBuf {
        self.root.join("client.toml")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("tallyd.lock")
    }
    pub fn database(&self) -> PathBuf {
        self.root.join("tally.db")
    }
    pub fn node_id(&self) -> PathBuf {
        self.root.join("node_id")
    }
}

/// This node's id in a cluster: made at first start and kept in `node_id`, so that a node
/// restarted on its data directory is the same node.
pub fn node_id(dir: &DataDir) -> Result<String> {
    let path = dir.node_id();
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.is_empty()
                || id.len() > 64
                || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                bail!("{} does not hold a node id (1 to 64 letters, digits and dashes); remove it to make a new one", path.display());
            }
            Ok(id.to_string())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let id = hex::encode(rand::random::<[u8; 8]>());
            write_private(&path, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Creates the data directory (mode 0700) and makes the absolute path of it. Whatever the
/// umask, the SQLite files in it are made mode 0600 (SQLite gives its `-wal` and `-shm`
/// files the mode of the database file) and `tls/` mode 0700, also when an earlier version
/// left them readable by others.
pub fn prepare_data_dir(config: &Config) -> Result<DataDir> {
    let root = &config.data_dir;
    fs::create_dir_all(root)
        .with_context(|| format!("cannot create data directory {}", root.display()))?;
    let root =
        fs::canonicalize(root).with_context(|| format!("cannot resolve {}", root.display()))?;
    restrict(&root, 0o700)?;
    let dir = DataDir::new(&root);
    if config.database.is_none() {
        let db = dir.database();
        // An empty file is an empty SQLite database; made here, it has our mode.
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&db)
        {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err).with_context(|| format!("cannot create {}", db.display())),
        }
        for suffix in ["", "-wal", "-shm"] {
            let path = PathBuf::from(format!("{}{suffix}", db.display()));
            if path.exists() {
                restrict(&path, 0o600)?;
            }
        }
    }
    let tls = root.join("tls");
    if tls.exists() {
        restrict(&tls, 0o700)?;
    }
    Ok(dir)
}

/// Sets `path`'s mode, whatever the umask made it.
fn restrict(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot restrict {} to mode {mode:o}", path.display()))
}

/// The data directory's lock, held by the running daemon; dropping it (or the process
/// ending, however it ends) releases it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: fs::File,
}

/// Locks the data directory for this process (an advisory `flock` on `tallyd.lock`, with
/// this process's id written in it), or refuses, naming the directory and the process that
/// holds it: two daemons on one data directory would grant the same seats twice.
/// `tallyd owner-token` does not take it: adding a token row is safe beside a running daemon.
pub fn lock_data_dir(dir: &DataDir) -> Result<DataDirLock> {
    let path = dir.lock_file();
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            let holder = match holder.trim() {
                "" => "another process".to_string(),
                pid => format!("another tallyd (pid {pid})"),
            };
            bail!(
                "the data directory {} is in use by {holder}; stop it, or give this daemon another data_dir",
                dir.root.display()
            );
        }
        Err(fs::TryLockError::Error(err)) => {
            return Err(err).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    file.set_len(0)?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    file.sync_all()?;
    Ok(DataDirLock { _file: file })
}

/// A new random token: 32 bytes as 64 hex digits.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// What the store keeps of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// Writes a file only its owner can read, atomically (write, fsync, rename).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A new Ed25519 signing key, PKCS#8.
fn new_signing_key() -> Result<Vec<u8>> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| Error::Invalid("cannot generate a signing key".into()))?;
    Ok(pkcs8.as_ref().to_vec())
}

/// Loads the Ed25519 signing key, making it on first start. Returns the key pair.
pub fn signing_key(dir: &DataDir) -> Result<Ed25519KeyPair> {
    let path = dir.signing_key();
    if !path.exists() {
        write_private(&path, &new_signing_key()?)?;
        tracing::info!(path = %path.display(), "generated the Ed25519 signing key");
    }
    let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ed25519KeyPair::from_pkcs8(&bytes)
        .map_err(|_| Error::Invalid(format!("{} is not an Ed25519 PKCS#8 key", path.display())))
}

/// The public half of the signing key, as sent in `Welcome`.
pub fn public_key(key: &Ed25519KeyPair) -> Vec<u8> {
    key.public_key().as_ref().to_vec()
}

/// A new private CA: its PEM certificate and key.
fn new_ca() -> Result<(String, String)> {
    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let ca_cert = ca_params(SystemTime::now())
        .self_signed(&ca_key)
        .context("cannot sign the CA certificate")?;
    Ok((ca_cert.pem(), ca_key.serialize_pem()))
}

/// The private CA of `tls/ca.key`, as an issuer: issuing needs only its name and key, so
/// [`ca_params`] rebuild it.
fn ca_issuer(dir: &DataDir, now: SystemTime) -> Result<(rcgen::Certificate, KeyPair)> {
    let ca_key = KeyPair::from_pem(
        &fs::read_to_string(dir.ca_key())
            .with_context(|| format!("cannot read {}", dir.ca_key().display()))?,
    )
    .with_context(|| format!("{} is not a PEM private key", dir.ca_key().display()))?;
    let issuer = ca_params(now)
        .self_signed(&ca_key)
        .context("cannot rebuild the CA")?;
    Ok((issuer, ca_key))
}

/// Makes a server certificate for `names` when the config names no certificate and the data
/// directory has none yet, signed by the private CA of the data directory, which is made
/// first when there is none (a single node's first start; a cluster's CA was put there by
/// [`join_cluster`]).
pub fn ensure_certificates(config: &Config, dir: &DataDir) -> Result<()> {
    if config.tls.cert.is_some() || dir.server_cert().exists() {
        return Ok(());
    }
    fs::create_dir_all(dir.root.join("tls"))?;
    restrict(&dir.root.join("tls"), 0o700)?;
    let now = SystemTime::now();
    if !(dir.ca_key().exists() && dir.ca_cert().exists()) {
        let (cert, key) = new_ca()?;
        write_private(&dir.ca_key(), key.as_bytes())?;
        fs::write(dir.ca_cert(), cert)?;
        tracing::info!(dir = %dir.root.join("tls").display(), "generated a private CA");
    }
    let (ca_cert, ca_key) = ca_issuer(dir, now)?;

    let server_key = KeyPair::generate().context("cannot generate the server key")?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, config.tls.names[0].clone());
    for name in &config.tls.names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.clone()
                    .try_into()
                    .with_context(|| format!("tls.names: {name:?}"))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(10 * 365 * 86400)).into();
    let server_cert = params
        .signed_by(&server_key, &ca_cert, &ca_key)
        .context("cannot sign the server certificate")?;

    write_private(&dir.server_key(), server_key.serialize_pem().as_bytes())?;
    fs::write(dir.server_cert(), server_cert.pem())?;
    tracing::info!(names = ?config.tls.names, dir = %dir.root.join("tls").display(), "generated a server certificate signed by the private CA");
    Ok(())
}

/// Puts the cluster's identity (SPEC §7, "Joining") into this node's data directory, so
/// that the rest of the start reads it as a single node reads its own: the signing key,
/// and the private CA from which this node then makes its own certificate. The first node
/// on an empty database offers what its data directory holds (or new ones); every node
/// adopts what the database then holds. Files of another identity are replaced, and the
/// certificates made from them removed, saying so.
pub async fn join_cluster(
    config: &Config,
    dir: &DataDir,
    cluster: &dyn crate::store::ClusterStore,
) -> Result<()> {
    // Whether this data directory held an identity already (a node restarting): it is
    // offered again, and "made" would not be true of it.
    let held_before = dir.signing_key().exists();
    let signing_key = match fs::read(dir.signing_key()) {
        Ok(key) => key,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => new_signing_key()?,
        Err(err) => {
            return Err(err).with_context(|| format!("cannot read {}", dir.signing_key().display()))
        }
    };
    let ca = if config.tls.cert.is_some() {
        None
    } else if dir.ca_cert().exists() && dir.ca_key().exists() {
        Some((
            fs::read_to_string(dir.ca_cert())
                .with_context(|| format!("cannot read {}", dir.ca_cert().display()))?,
            fs::read_to_string(dir.ca_key())
                .with_context(|| format!("cannot read {}", dir.ca_key().display()))?,
        ))
    } else {
        Some(new_ca()?)
    };
    let offered = crate::store::ClusterIdentity { signing_key, ca };
    let adopted = cluster
        .adopt_identity(offered.clone())
        .await
        .context("cannot read or store the cluster's identity in the database")?;
    if fs::read(dir.signing_key()).ok().as_deref() != Some(&adopted.signing_key[..]) {
        if dir.signing_key().exists() {
            tracing::warn!(path = %dir.signing_key().display(), "replacing this node's signing key with the cluster's");
        }
        Ed25519KeyPair::from_pkcs8(&adopted.signing_key).map_err(|_| {
            Error::Invalid(
                "the cluster's signing key in the database is not an Ed25519 PKCS#8 key".into(),
            )
        })?;
        write_private(&dir.signing_key(), &adopted.signing_key)?;
        remove_if_present(&dir.signing_cert())?;
        remove_if_present(&dir.signing_csr())?;
    }
    match (&adopted.ca, &config.tls.cert) {
        (Some((cert, key)), None) => {
            let same = fs::read_to_string(dir.ca_cert()).ok().as_ref() == Some(cert)
                && fs::read_to_string(dir.ca_key()).ok().as_ref() == Some(key);
            if !same {
                if dir.ca_cert().exists() {
                    tracing::warn!(dir = %dir.root.join("tls").display(), "replacing this node's private CA with the cluster's, and making its certificates again");
                }
                fs::create_dir_all(dir.root.join("tls"))?;
                restrict(&dir.root.join("tls"), 0o700)?;
                write_private(&dir.ca_key(), key.as_bytes())?;
                fs::write(dir.ca_cert(), cert)
                    .with_context(|| format!("cannot write {}", dir.ca_cert().display()))?;
                for made in [dir.server_cert(), dir.server_key(), dir.signing_cert()] {
                    remove_if_present(&made)?;
                }
            }
        }
        (None, None) => bail!(
            "the cluster uses the admin's certificates (its first node had tls.cert set), so it has no CA to make this node's certificate with: set tls.cert and tls.key on this node too"
        ),
        (_, Some(_)) => {}
    }
    if adopted == offered && held_before {
        tracing::info!("this node holds the cluster's identity");
    } else if adopted == offered {
        tracing::info!("this node made the cluster's identity");
    } else {
        tracing::info!("joined the cluster: adopted its signing key and CA");
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// The private CA's certificate parameters. Issuing needs only its name and key, so the
/// same parameters rebuild the issuer from `tls/ca.key` at a later start.
fn ca_params(now: SystemTime) -> CertificateParams {
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "Tally private CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = (now - Duration::from_secs(3600)).into();
    ca.not_after = (now + Duration::from_secs(20 * 365 * 86400)).into();
    ca
}

/// Reads a PEM file of certificates as DER.
pub fn read_chain(path: &Path) -> Result<Vec<Vec<u8>>> {
    Ok(read_certs(path)?
        .into_iter()
        .map(|cert| cert.as_ref().to_vec())
        .collect())
}

/// Whether the first certificate of `chain` is for `key`: it must verify a signature the key
/// makes. With `anchor`, also whether the chain leads to that CA at `now`, for borrow signing.
pub fn certifies(
    chain: &[Vec<u8>],
    key: &Ed25519KeyPair,
    anchor: Option<&[u8]>,
    now: SystemTime,
) -> std::result::Result<(), String> {
    let leaf = CertificateDer::from(chain[0].as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|err| format!("{err}"))?;
    let probe = b"tally borrow signing key probe";
    ee.verify_signature(webpki::ring::ED25519, probe, key.sign(probe).as_ref())
        .map_err(|_| {
            format!(
                "it is not a certificate for this server's signing key (public key {})",
                hex::encode(key.public_key().as_ref())
            )
        })?;
    if let Some(anchor) = anchor {
        let anchor = CertificateDer::from(anchor);
        let anchors = [webpki::anchor_from_trusted_cert(&anchor).map_err(|err| format!("{err}"))?];
        let intermediates: Vec<CertificateDer<'_>> = chain[1..]
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let time = rustls_pki_types::UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            time,
            webpki::KeyUsage::required_if_present(BORROW_SIGNING_EKU),
            None,
            None,
        )
        .map_err(|err| format!("it does not chain to the CA: {err}"))?;
    }
    Ok(())
}

/// The certificate chain (DER, the signing key's certificate first) that every borrow token
/// carries, so that clients can check with the CA they trust that the signing key is this
/// server's. `None` when there is none: the server then refuses borrows.
///
/// - `borrow.signing_cert` set: that file, which must certify the signing key.
/// - no `tls.cert`: `tls/signing.pem`, issued by the generated CA (made now if absent, for
///   another key, or no longer valid).
/// - `tls.cert` set without `borrow.signing_cert`: none; a certificate request for the
///   signing key is written to `signing.csr` for the admin's CA, and a warning says so.
pub fn signing_chain(
    config: &Config,
    dir: &DataDir,
    key: &Ed25519KeyPair,
) -> Result<Option<Vec<Vec<u8>>>> {
    let now = SystemTime::now();
    if let Some(path) = &config.borrow.signing_cert {
        let chain = read_chain(path).context("borrow.signing_cert")?;
        write_signing_request(dir, key)?;
        if let Err(why) = certifies(&chain, key, None, now) {
            bail!(
                "borrow.signing_cert {}: {why}; issue it for the key in {}",
                path.display(),
                dir.signing_csr().display()
            );
        }
        return Ok(Some(chain));
    }
    if config.tls.cert.is_some() || !dir.ca_key().exists() {
        write_signing_request(dir, key)?;
        tracing::warn!(
            request = %dir.signing_csr().display(),
            "borrowing is off: clients trust a CA whose key tallyd does not have, so it cannot certify its signing key; have that CA issue a certificate for the request (extendedKeyUsage codeSigning) and set borrow.signing_cert to it"
        );
        return Ok(None);
    }
    let ca_pem = fs::read(dir.ca_cert())
        .with_context(|| format!("cannot read {}", dir.ca_cert().display()))?;
    let ca_der = CertificateDer::from_pem_slice(&ca_pem)
        .with_context(|| format!("{} is not a PEM certificate", dir.ca_cert().display()))?
        .as_ref()
        .to_vec();
    let path = dir.signing_cert();
    if path.exists() {
        let chain = read_chain(&path)?;
        // Good for another 30 days at least, or made again.
        let later = now + Duration::from_secs(30 * 86400);
        match certifies(&chain, key, Some(&ca_der), now)
            .and_then(|()| certifies(&chain, key, Some(&ca_der), later))
        {
            Ok(()) => return Ok(Some(chain)),
            Err(why) => {
                tracing::warn!(path = %path.display(), %why, "making the signing certificate again")
            }
        }
    }
    let (issuer, ca_key) = ca_issuer(dir, now)?;
    let subject = signing_key_pair(dir)?;
    let cert = signing_params(key, now)
        .signed_by(&subject, &issuer, &ca_key)
        .context("cannot sign the signing key's certificate")?;
    let chain = vec![cert.der().as_ref().to_vec()];
    certifies(&chain, key, Some(&ca_der), now).map_err(|why| {
        Error::Invalid(format!(
            "the signing certificate just made is unusable: {why}"
        ))
    })?;
    fs::write(&path, cert.pem()).with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(path = %path.display(), "the private CA certified the borrow signing key");
    Ok(Some(chain))
}

/// The signing key as rcgen needs it to be named in a certificate or request.
fn signing_key_pair(dir: &DataDir) -> Result<KeyPair> {
    let pkcs8 = fs::read(dir.signing_key())
        .with_context(|| format!("cannot read {}", dir.signing_key().display()))?;
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.into(), &rcgen::PKCS_ED25519)
        .with_context(|| format!("{} is not an Ed25519 key", dir.signing_key().display()))
}

/// What a certificate for the signing key says: its name and its one usage.
fn signing_params(key: &Ed25519KeyPair, now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        format!(
            "Tally borrow signing key {}",
            tally_protocol::key_id(key.public_key().as_ref())
        ),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(10 * 365 * 86400)).into();
    params
}

/// Writes `signing.csr`, a certificate request for the signing key, unless it is there.
fn write_signing_request(dir: &DataDir, key: &Ed25519KeyPair) -> Result<()> {
    let path = dir.signing_csr();
    if path.exists() {
        return Ok(());
    }
    let request = signing_params(key, SystemTime::now())
        .serialize_request(&signing_key_pair(dir)?)
        .context("cannot make a certificate request for the signing key")?;
    let pem = request
        .pem()
        .context("cannot encode the certificate request")?;
    fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Builds the TLS configuration from the configured or generated files. Called at start
/// and on SIGHUP.
pub fn tls_config(config: &Config, dir: &DataDir) -> Result<Arc<ServerConfig>> {
    let (cert_path, key_path) = server_cert_paths(config, dir);
    let certs = read_certs(&cert_path)?;
    let key = read_key(&key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &config.tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => builder.with_client_cert_verifier(client_verifier(path)?),
    };
    let server = builder
        .with_single_cert(certs, key)
        .with_context(|| mismatch(&key_path, &cert_path))?;
    Ok(Arc::new(server))
}

/// The server's certificate and key: `tls.cert` and `tls.key`, or the generated ones.
fn server_cert_paths(config: &Config, dir: &DataDir) -> (PathBuf, PathBuf) {
    match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => (dir.server_cert(), dir.server_key()),
    }
}

/// Reads a PEM certificate chain (at least one certificate).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

/// Reads a PEM private key.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("{} is not a PEM private key", path.display()))
}

/// Whether the TLS configuration can serve `certs` with `key`: a key rustls can use, and the
/// private key of the first certificate (else `InconsistentKeys::KeyMismatch`).
pub fn check_pair(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> std::result::Result<(), rustls::Error> {
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(certs, key, &provider).map(drop)
}

fn mismatch(key_path: &Path, cert_path: &Path) -> String {
    format!(
        "{} does not match {}",
        key_path.display(),
        cert_path.display()
    )
}

/// The verifier of client certificates signed by the CA bundle of `tls.client_ca`.
pub fn client_verifier(path: &Path) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).with_context(|| {
            format!(
                "{} holds a certificate that cannot be a trust anchor",
                path.display()
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .with_context(|| format!("tls.client_ca {}", path.display()))
}

/// Writes `owner.token` and `client.toml` for a freshly made owner account. The client file
/// names the server by the first of `tls.names` and the port actually bound.
pub fn write_owner_files(config: &Config, dir: &DataDir, token: &str, port: u16) -> Result<()> {
    write_private(&dir.owner_token(), format!("{token}\n").as_bytes())?;
    let host = config.tls.names.first().map_or("localhost", String::as_str);
    let server = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    let ca = if config.tls.cert.is_none() {
        format!("ca = {:?}\n", dir.ca_cert().display().to_string())
    } else {
        "# ca = \"/path/to/the/ca.pem\"   # the CA that signed tls.cert\n".to_string()
    };
    let text = format!(
        "# Client configuration for the owner of this Tally server, written at first start.\n\
         servers = [{server:?}]\n{ca}token_file = {:?}\n",
        dir.owner_token().display().to_string()
    );
    write_private(&dir.client_config(), text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_an_earlier_version_left_readable_are_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        fs::create_dir_all(root.join("tls")).unwrap();
        fs::set_permissions(root.join("tls"), fs::Permissions::from_mode(0o755)).unwrap();
        for name in ["tally.db", "tally.db-wal", "tally.db-shm"] {
            fs::write(root.join(name), b"").unwrap();
            fs::set_permissions(root.join(name), fs::Permissions::from_mode(0o644)).unwrap();
        }
        let config = Config::with_defaults("127.0.0.1:0".parse().unwrap(), root.clone());
        let dir = prepare_data_dir(&config).unwrap();
        assert_eq!(mode(&dir.root), 0o700);
        assert_eq!(mode(&dir.root.join("tls")), 0o700);
        for name in ["tally.db", "tally.db-wal", "tally.db-shm"] {
            assert_eq!(mode(&dir.root.join(name)), 0o600, "{name}");
        }
    }

    #[test]
    fn a_second_lock_on_a_data_directory_is_refused_naming_it_and_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let held = lock_data_dir(&dir).unwrap();
        let pid = std::process::id();
        assert_eq!(
            fs::read_to_string(dir.lock_file()).unwrap(),
            format!("{pid}\n")
        );
        let err = format!("{:#}", lock_data_dir(&dir).unwrap_err());
        assert!(err.contains(&tmp.path().display().to_string()), "{err}");
        assert!(err.contains(&format!("pid {pid}")), "{err}");
        drop(held);
        lock_data_dir(&dir).expect("free again once the holder is gone");
    }
}
