//! A small synchronous PostgreSQL client over `std::net::TcpStream` (the host's `tcp`
//! capability on wasm32-wasip2): startup, password authentication (cleartext, MD5,
//! SCRAM-SHA-256), and the simple query protocol with text results. Messages are encoded
//! and decoded by `postgres-protocol`, the rust-postgres project's protocol crate.

use std::fmt;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend, frontend};

/// Most bytes of one query's results kept in memory.
pub const MAX_RESULT_BYTES: usize = 256 << 20;

/// Why a database call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum PgError {
    /// The server's ErrorResponse.
    Server { code: String, message: String, detail: Option<String>, hint: Option<String> },
    /// Connecting, reading or writing failed.
    Io(String),
    /// The server said something this client does not understand.
    Protocol(String),
}

impl PgError {
    pub fn code(&self) -> Option<&str> {
        match self {
            PgError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::Server { code, message, detail, hint } => {
                write!(f, "ERROR {code}: {message}")?;
                if let Some(d) = detail {
                    write!(f, " (detail: {d})")?;
                }
                if let Some(h) = hint {
                    write!(f, " (hint: {h})")?;
                }
                Ok(())
            }
            PgError::Io(m) => write!(f, "connection failed: {m}"),
            PgError::Protocol(m) => write!(f, "unexpected message from the server: {m}"),
        }
    }
}

pub type PgResult<T> = Result<T, PgError>;

/// One column of a result: its name and type OID.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
}

/// The result of one statement: its columns and rows (text values), and its command tag.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatementResult {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Option<String>>>,
    pub tag: String,
}

/// Where to connect and as whom.
pub struct Config<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub database: &'a str,
    pub schema: Option<&'a str>,
    pub connect_timeout: Duration,
    pub socket_timeout: Duration,
}

pub struct Connection {
    stream: TcpStream,
    buf: BytesMut,
    /// Server notices (RAISE NOTICE ...) for the task log.
    pub notices: Vec<String>,
}

fn io(e: std::io::Error) -> PgError {
    PgError::Io(e.to_string())
}

/// The fields of an ErrorResponse or NoticeResponse.
fn server_error(mut fields: backend::ErrorFields<'_>) -> PgError {
    let (mut code, mut message, mut detail, mut hint) = (String::new(), String::new(), None, None);
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = Some(value),
            b'H' => hint = Some(value),
            _ => {}
        }
    }
    PgError::Server { code, message, detail, hint }
}

impl Connection {
    pub fn connect(config: &Config<'_>) -> PgResult<Connection> {
        let stream = TcpStream::connect((config.host, config.port))
            .map_err(|e| PgError::Io(format!("cannot connect to {}:{}: {e}", config.host, config.port)))?;
        // Not every platform supports socket timeouts; the call's own limits still apply.
        let _ = stream.set_read_timeout(Some(config.socket_timeout));
        let _ = stream.set_write_timeout(Some(config.connect_timeout.max(config.socket_timeout)));
        let mut conn = Connection { stream, buf: BytesMut::new(), notices: Vec::new() };
        let mut params = vec![("user", config.user), ("database", config.database), ("client_encoding", "UTF8")];
        // Any run-time parameter may be set in the startup packet: `schema` is the search path.
        let search_path = config.schema.map(|s| format!("\"{}\"", s.replace('"', "\"\"")));
        if let Some(path) = &search_path {
            params.push(("search_path", path.as_str()));
        }
        params.push(("application_name", "spade pg>"));
        let mut out = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut out).map_err(io)?;
        conn.send(&out)?;
        conn.authenticate(config)?;
        // Until ReadyForQuery: parameter status, backend key data.
        loop {
            match conn.read()? {
                backend::Message::ReadyForQuery(_) => return Ok(conn),
                backend::Message::ErrorResponse(body) => return Err(server_error(body.fields())),
                _ => {}
            }
        }
    }

    fn authenticate(&mut self, config: &Config<'_>) -> PgResult<()> {
        let password = || {
            config.password.ok_or_else(|| {
                PgError::Io("the server asks for a password and the pg.password secret is not set".into())
            })
        };
        loop {
            let mut out = BytesMut::new();
            match self.read()? {
                backend::Message::AuthenticationOk => return Ok(()),
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut out).map_err(io)?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        config.user.as_bytes(),
                        password()?.as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut out).map_err(io)?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut scram = false;
                    while let Ok(Some(m)) = mechanisms.next() {
                        scram |= m == SCRAM_SHA_256;
                    }
                    if !scram {
                        return Err(PgError::Protocol("the server offers no SASL mechanism this client knows".into()));
                    }
                    let mut sasl = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, sasl.message(), &mut out).map_err(io)?;
                    self.send(&out)?;
                    match self.read()? {
                        backend::Message::AuthenticationSaslContinue(body) => {
                            sasl.update(body.data()).map_err(|e| PgError::Protocol(e.to_string()))?;
                        }
                        backend::Message::ErrorResponse(body) => return Err(server_error(body.fields())),
                        _ => return Err(PgError::Protocol("expected SASL continue".into())),
                    }
                    let mut out = BytesMut::new();
                    frontend::sasl_response(sasl.message(), &mut out).map_err(io)?;
                    self.send(&out)?;
                    match self.read()? {
                        backend::Message::AuthenticationSaslFinal(body) => {
                            sasl.finish(body.data()).map_err(|e| PgError::Protocol(e.to_string()))?;
                        }
                        backend::Message::ErrorResponse(body) => return Err(server_error(body.fields())),
                        _ => return Err(PgError::Protocol("expected SASL final".into())),
                    }
                    continue;
                }
                backend::Message::ErrorResponse(body) => return Err(server_error(body.fields())),
                _ => {
                    return Err(PgError::Protocol(
                        "unsupported authentication method (use password, md5 or scram-sha-256)".into(),
                    ));
                }
            }
            self.send(&out)?;
        }
    }

    fn send(&mut self, bytes: &[u8]) -> PgResult<()> {
        self.stream.write_all(bytes).map_err(io)?;
        self.stream.flush().map_err(io)
    }

    fn read(&mut self) -> PgResult<backend::Message> {
        loop {
            if let Some(message) =
                backend::Message::parse(&mut self.buf).map_err(|e| PgError::Protocol(e.to_string()))?
            {
                if let backend::Message::NoticeResponse(body) = &message {
                    if let PgError::Server { message, .. } = server_error(body.fields()) {
                        self.notices.push(message);
                    }
                    continue;
                }
                return Ok(message);
            }
            let mut chunk = [0u8; 16 << 10];
            let n = self.stream.read(&mut chunk).map_err(io)?;
            if n == 0 {
                return Err(PgError::Io("the server closed the connection".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Runs `sql` (one or more statements) with the simple query protocol: the result of
    /// each statement, or the first error (after which the server skipped the rest).
    pub fn query(&mut self, sql: &str) -> PgResult<Vec<StatementResult>> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(io)?;
        self.send(&out)?;
        let mut results = Vec::new();
        let mut current = StatementResult::default();
        let mut error = None;
        let mut bytes = 0usize;
        loop {
            match self.read()? {
                backend::Message::RowDescription(body) => {
                    let mut fields = body.fields();
                    current.columns.clear();
                    while let Ok(Some(f)) = fields.next() {
                        current.columns.push(Column { name: f.name().to_string(), type_oid: f.type_oid() });
                    }
                }
                backend::Message::DataRow(body) => {
                    let buffer = body.buffer();
                    let mut ranges = body.ranges();
                    let mut row = Vec::with_capacity(current.columns.len());
                    while let Ok(Some(range)) = ranges.next() {
                        row.push(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned()));
                    }
                    bytes += buffer.len();
                    if bytes > MAX_RESULT_BYTES && error.is_none() {
                        error = Some(PgError::Io(format!("the results are larger than {MAX_RESULT_BYTES} bytes")));
                    }
                    if error.is_none() {
                        current.rows.push(row);
                    }
                }
                backend::Message::CommandComplete(body) => {
                    current.tag = body.tag().unwrap_or_default().to_string();
                    results.push(std::mem::take(&mut current));
                }
                backend::Message::EmptyQueryResponse => results.push(std::mem::take(&mut current)),
                backend::Message::ErrorResponse(body) => error = Some(server_error(body.fields())),
                backend::Message::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(results),
                    };
                }
                backend::Message::CopyInResponse(_) | backend::Message::CopyOutResponse(_) => {
                    return Err(PgError::Protocol("COPY is not supported by pg>".into()));
                }
                _ => {}
            }
        }
    }

    /// Sends Terminate (best effort).
    pub fn close(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = self.send(&out);
    }
}
