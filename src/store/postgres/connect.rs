//! How orderwatch reaches PostgreSQL: `[database]` turned into a connection configuration
//! ([`PgConnect`]) that the writer's own connection and the read pool both use, with the
//! password from its secret, the session limits (`lock_timeout`, `statement_timeout`, so a
//! stuck lock fails a batch with a 503 instead of hanging it), and TLS through rustls with the
//! same crypto provider as the Musement client.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres::Client;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{DatabaseConfig, TlsMode};

/// How long opening a connection may take before it counts as failed (unless the URL says).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything needed to open a connection to the configured server. Debug shows no password.
#[derive(Clone)]
pub struct PgConnect {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// The URL, password masked, for messages.
    shown: String,
}

impl std::fmt::Debug for PgConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Why a connection configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[error("database.{key}: {reason}")]
pub struct ConnectSetupError {
    key: &'static str,
    reason: String,
}

impl PgConnect {
    /// The configuration `[database]` describes (`url` must be set); `instance` names the
    /// connections in `pg_stat_activity` (`application_name`), unless the URL names them.
    pub fn from_config(
        database: &DatabaseConfig,
        instance: &str,
    ) -> Result<Self, ConnectSetupError> {
        let url = database.url.as_ref().ok_or(ConnectSetupError {
            key: "url",
            reason: "is not set".into(),
        })?;
        let mut config = url.connect_config();
        if let Some(password) = &database.password {
            config.password(password.expose());
        }
        if config.get_application_name().is_none() {
            config.application_name(format!("orderwatch {instance}"));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let mode = database.tls_mode();
        config.ssl_mode(match mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Require | TlsMode::VerifyFull => SslMode::Require,
        });
        // Server notices (`CREATE … IF NOT EXISTS` skipping, say) are not for the log.
        let session = format!(
            "-c lock_timeout={} -c statement_timeout={} -c client_min_messages=warning",
            database.lock_timeout.as_millis(),
            database.statement_timeout.as_millis()
        );
        let options = match config.get_options() {
            Some(theirs) => format!("{theirs} {session}"),
            None => session,
        };
        config.options(options);
        let tls = tls_config(mode, database.tls_ca_file.as_deref())?;
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new(tls),
            shown: url.to_string(),
        })
    }

    /// [`PgConnect::from_config`] for `url` with every other `[database]` key at its default
    /// (tests and tools).
    pub fn from_url(url: &str, instance: &str) -> Result<Self, ConnectSetupError> {
        let database = DatabaseConfig {
            url: Some(
                url.parse()
                    .map_err(|reason| ConnectSetupError { key: "url", reason })?,
            ),
            ..DatabaseConfig::default()
        };
        Self::from_config(&database, instance)
    }

    /// The URL, password masked.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Opens one connection, driven by a task on the current runtime.
    pub async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "a PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// A pool of up to `size` connections for reads and claims. Connections are opened on
    /// first use, so building it never waits for the server.
    pub fn pool(&self, size: usize) -> Pool {
        let manager = Manager::from_config(
            self.config.clone(),
            self.tls.clone(),
            ManagerConfig {
                // A connection is checked with a round trip before it is lent again: one the
                // server closed (a restart, pg_terminate_backend) is dropped, not handed out.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        Pool::builder(manager)
            .max_size(size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(
                self.config
                    .get_connect_timeout()
                    .copied()
                    .unwrap_or(CONNECT_TIMEOUT),
            ))
            .create_timeout(Some(
                self.config
                    .get_connect_timeout()
                    .copied()
                    .unwrap_or(CONNECT_TIMEOUT),
            ))
            .build()
            .expect("a runtime is given, so building the pool cannot fail")
    }
}

/// The rustls configuration for `mode`: certificates checked against `ca_file`'s CAs or the
/// platform's for `verify-full`, not checked for `require` (libpq's meaning), unused for
/// `disable`.
fn tls_config(
    mode: TlsMode,
    ca_file: Option<&std::path::Path>,
) -> Result<ClientConfig, ConnectSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectSetupError {
            key: "tls",
            reason: e.to_string(),
        })?;
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, ca_file) {
        (TlsMode::Require, _) => Arc::new(AnyCertificate(provider)),
        (_, Some(path)) => {
            let mut roots = rustls::RootCertStore::empty();
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ConnectSetupError {
                    key: "tls_ca_file",
                    reason: format!("cannot read {}: {e}", path.display()),
                })?;
            let (added, _) = roots.add_parsable_certificates(certificates);
            if added == 0 {
                return Err(ConnectSetupError {
                    key: "tls_ca_file",
                    reason: format!("{} holds no usable certificate", path.display()),
                });
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ConnectSetupError {
                    key: "tls_ca_file",
                    reason: e.to_string(),
                })?
        }
        (_, None) => Arc::new(
            rustls_platform_verifier::Verifier::new(provider).map_err(|e| ConnectSetupError {
                key: "tls",
                reason: format!("cannot load the system's certificate authorities: {e}"),
            })?,
        ),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `tls = "require"`: encrypted, any certificate accepted (the handshake's signatures are
/// still checked, so the session key belongs to whoever holds the certificate's key).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
