//! PKCS#11 custody: keys generated inside a hardware token (or SoftHSM2), private objects
//! sensitive and never extractable, used through a pool of logged-in sessions.
//!
//! PKCS#11 sessions are not thread-safe: each call takes a session from the pool (opening
//! one while fewer than `max_sessions` are open, waiting otherwise) and gives it back.
//! Every call blocks: callers run it off the async executor. A call that fails in a way that
//! says the token or module is gone drops the connection; [`Token::probe`] reconnects and
//! logs in again when it answers.

mod objects;
mod wrapping;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::keys::Algorithm;

pub(crate) use objects::TokenKey;

/// How to reach the token, as configured (`[pkcs11]`) with the PIN resolved.
pub struct TokenSettings {
    /// Path of the PKCS#11 library.
    pub module: PathBuf,
    /// Label of the token to use.
    pub token_label: String,
    /// The user PIN (from `pin_file` or `KEYWARD_PKCS11_PIN`).
    pub pin: Zeroizing<String>,
    /// Most sessions open at once.
    pub max_sessions: usize,
}

/// Why the token cannot be used. Messages name the setting to check, never the PIN.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The library could not be loaded or initialised.
    #[error("[pkcs11] module: cannot load {module}: {reason}: check the path and that the library is installed for this machine (e.g. Debian's softhsm2 package puts /usr/lib/softhsm/libsofthsm2.so)")]
    Module {
        /// The configured path.
        module: String,
        /// The loader's or module's error.
        reason: String,
    },
    /// No slot holds a token with the configured label.
    #[error("[pkcs11] token_label: no token labelled {label:?} in {module} (tokens present: {present}): check token_label, and that the token is plugged in and initialised")]
    NoToken {
        /// The configured label.
        label: String,
        /// The module.
        module: String,
        /// Labels of the tokens that are there.
        present: String,
    },
    /// The token refused the PIN.
    #[error("[pkcs11] pin_file / KEYWARD_PKCS11_PIN: token {label:?} refused the user PIN ({reason}): check the PIN; each wrong attempt counts towards locking it")]
    WrongPin {
        /// The token.
        label: String,
        /// The module's code.
        reason: String,
    },
    /// The user PIN is locked.
    #[error("[pkcs11] pin_file / KEYWARD_PKCS11_PIN: the user PIN of token {label:?} is locked after too many wrong attempts: the token's security officer must unlock or reset it; keyward did not try to log in")]
    PinLocked {
        /// The token.
        label: String,
    },
    /// A live key's private object is not in the token.
    #[error("key {kid} is not in PKCS#11 token {token:?}: was the token reset or replaced? Check [pkcs11] token_label; if the key is lost, revoke it (keyward keys revoke {kid})")]
    Missing {
        /// The key.
        kid: String,
        /// The token.
        token: String,
    },
    /// The token holds no master key with the configured label.
    #[error("[master_key] key_label: PKCS#11 token {token:?} holds no AES key labelled {label:?}: was the token reset or replaced?")]
    MasterKeyMissing {
        /// The configured label.
        label: String,
        /// The token.
        token: String,
    },
    /// An algorithm whose keys keyward does not keep in tokens.
    #[error("{0} keys are not kept in PKCS#11 tokens: use custody = \"sealed\" for them")]
    Unsupported(Algorithm),
    /// The token or its module stopped answering.
    #[error("the PKCS#11 token does not answer")]
    Unavailable,
    /// Any other refusal by the module.
    #[error("PKCS#11 {operation} failed: {source}")]
    Call {
        /// What was being done.
        operation: &'static str,
        /// The module's error.
        #[source]
        source: CkError,
    },
}

/// `.map_err` for a failed call doing `operation`.
fn call(operation: &'static str) -> impl FnOnce(CkError) -> TokenError {
    move |source| TokenError::Call { operation, source }
}

/// A logged-in connection to the token: the module's context and the session pool.
struct Connection {
    pkcs11: Pkcs11,
    slot: Slot,
    /// Counts connections, so that cached object handles of an earlier one are not used.
    generation: u64,
    idle: Mutex<Vec<Session>>,
    open: Mutex<usize>,
    freed: Condvar,
}

/// One configured token, connected or waiting to reconnect.
pub struct Token {
    settings: TokenSettings,
    connection: RwLock<Option<Arc<Connection>>>,
    /// When [`Token::probe`] last tried or checked, so that a dead token is not hammered.
    last_probe: Mutex<Option<Instant>>,
    generations: Mutex<u64>,
}

/// How often a healthy token is checked, and a failed one retried.
const PROBE_EVERY: Duration = Duration::from_secs(1);

impl Token {
    /// Loads the module, finds the token and logs in: start-up refuses to go on otherwise.
    pub fn open(settings: TokenSettings) -> Result<Arc<Token>, TokenError> {
        let token =
            Token { settings, connection: RwLock::new(None), last_probe: Mutex::new(None), generations: Mutex::new(0) };
        let connection = token.connect()?;
        *token.connection.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(connection));
        Ok(Arc::new(token))
    }

    /// The configured token label.
    pub fn label(&self) -> &str {
        &self.settings.token_label
    }

    /// Whether the token answered its last call.
    pub fn is_available(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Arc<Connection>> {
        self.connection.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn connect(&self) -> Result<Connection, TokenError> {
        let settings = &self.settings;
        let module = settings.module.display().to_string();
        let failed = |reason: String| TokenError::Module { module: module.clone(), reason };
        let pkcs11 = Pkcs11::new(&settings.module).map_err(|err| failed(err.to_string()))?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(err) => return Err(failed(err.to_string())),
        }
        let mut present = Vec::new();
        let mut found = None;
        for slot in pkcs11.get_slots_with_token().map_err(|err| failed(err.to_string()))? {
            let Ok(info) = pkcs11.get_token_info(slot) else { continue };
            if info.label().trim_end() == settings.token_label {
                found = Some((slot, info));
                break;
            }
            if info.token_initialized() {
                present.push(format!("{:?}", info.label().trim_end()));
            }
        }
        let label = settings.token_label.clone();
        let Some((slot, info)) = found else {
            let present = if present.is_empty() { "none".to_owned() } else { present.join(", ") };
            return Err(TokenError::NoToken { label, module, present });
        };
        if info.user_pin_locked() {
            return Err(TokenError::PinLocked { label });
        }
        let session = pkcs11.open_rw_session(slot).map_err(call("opening a session"))?;
        let pin = AuthPin::from(settings.pin.as_str());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => return Err(TokenError::PinLocked { label }),
            Err(CkError::Pkcs11(rv @ (RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange), _)) => {
                return Err(TokenError::WrongPin { label, reason: rv.to_string() })
            }
            Err(err) => return Err(call("logging in")(err)),
        }
        let mut generations = self.generations.lock().unwrap_or_else(PoisonError::into_inner);
        *generations += 1;
        Ok(Connection {
            pkcs11,
            slot,
            generation: *generations,
            idle: Mutex::new(vec![session]),
            open: Mutex::new(1),
            freed: Condvar::new(),
        })
    }

    /// Whether [`PROBE_EVERY`] has passed since the last probe; if so, the next one starts
    /// now (cheap: no call to the module).
    pub fn probe_due(&self) -> bool {
        let mut last = self.last_probe.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < PROBE_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Checks a connected token, or tries to reconnect a failed one. Blocking: call it off
    /// the async executor, when [`Token::probe_due`]. Returns whether the token answers.
    pub fn probe(&self) -> bool {
        match self.current() {
            Some(_) => self.with_session("checking the token", |session| session.get_session_info().map(drop)).is_ok(),
            None => match self.connect() {
                Ok(connection) => {
                    *self.connection.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(connection));
                    tracing::info!(token = %self.settings.token_label, "the PKCS#11 token answers again; logged in");
                    true
                }
                Err(err) => {
                    tracing::debug!(error = %err, "the PKCS#11 token is still unavailable");
                    false
                }
            },
        }
    }

    /// Runs `f` on a pooled session of the current connection. A failure that says the
    /// token or module is gone drops the connection (until [`Token::probe`] reconnects).
    fn with_session<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Session) -> Result<T, CkError>,
    ) -> Result<T, TokenError> {
        self.with_connection(operation, |_, session| f(session))
    }

    fn with_connection<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Connection, &Session) -> Result<T, CkError>,
    ) -> Result<T, TokenError> {
        let connection = self.current().ok_or(TokenError::Unavailable)?;
        let session = connection.take(self.settings.max_sessions).map_err(|err| self.failed(&connection, err))?;
        let result = f(&connection, &session);
        match result {
            Ok(value) => {
                connection.give_back(session);
                Ok(value)
            }
            Err(err) if is_token_gone(&err) => {
                connection.forget(session);
                Err(self.failed(&connection, err))
            }
            Err(err) => {
                connection.give_back(session);
                Err(call(operation)(err))
            }
        }
    }

    /// Drops `connection` (if still current) after `err` said the token is gone.
    fn failed(&self, connection: &Arc<Connection>, err: CkError) -> TokenError {
        let mut current = self.connection.write().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, connection)) {
            tracing::error!(token = %self.settings.token_label, error = %err, "the PKCS#11 token stopped answering; signing with it is refused until it returns");
            *current = None;
        }
        TokenError::Unavailable
    }
}

impl Connection {
    /// An idle session, or a new one while fewer than `max` are open; waits otherwise.
    fn take(&self, max: usize) -> Result<Session, CkError> {
        if let Some(session) = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Ok(session);
        }
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(session) = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop() {
                return Ok(session);
            }
            if *open < max {
                *open += 1;
                drop(open);
                // Sessions share the application's login, made once on connecting.
                return self.pkcs11.open_rw_session(self.slot).inspect_err(|_| self.forget_one());
            }
            open = self.freed.wait(open).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn give_back(&self, session: Session) {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(session);
        self.freed.notify_one();
    }

    fn forget(&self, session: Session) {
        drop(session);
        self.forget_one();
    }

    fn forget_one(&self) {
        *self.open.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
        self.freed.notify_one();
    }
}

/// Whether `err` says the token, the module or the login is gone (rather than refusing
/// one request).
fn is_token_gone(err: &CkError) -> bool {
    match err {
        CkError::Pkcs11(rv, _) => matches!(
            rv,
            RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::SessionClosed
                | RvError::SessionHandleInvalid
                | RvError::SessionCount
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
                | RvError::GeneralError
                | RvError::FunctionFailed
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid
        ),
        _ => true,
    }
}
