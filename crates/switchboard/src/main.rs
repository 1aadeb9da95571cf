//! `switchboard`: the server binary and its companion commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use switchboard_client::{ApiClient, WsClient};
use switchboard_server::Server;
use switchboard_server::auth::{Audience, TokenClaims, mint_hs256};
use switchboard_server::config::{Config, Resolved};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "One real-time server for every transport of the web"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Address to listen on (overrides `listen` in the config and SWITCHBOARD_LISTEN).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Mint a connection token (HS256) with the config's `[auth] token_secret`.
    Token {
        #[command(flatten)]
        config: ConfigArgs,
        /// The secret to sign with, instead of the config's.
        #[arg(long, env = "SWITCHBOARD_TOKEN_SECRET")]
        secret: Option<String>,
        /// User id (`sub`).
        #[arg(long)]
        sub: String,
        /// Channel patterns the user may subscribe to (repeatable; `*` matches any run).
        #[arg(long)]
        subscribe: Vec<String>,
        /// Channel patterns the user may publish to from the client (repeatable).
        #[arg(long)]
        publish: Vec<String>,
        /// Room patterns the user may join (repeatable).
        #[arg(long)]
        rooms: Vec<String>,
        /// `info` claim: any JSON, shown to others in presence.
        #[arg(long)]
        info: Option<String>,
        /// Lifetime in seconds (0: no expiry).
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Publish a message through the server API of a running server.
    Publish {
        #[command(flatten)]
        server: ServerArgs,
        channel: String,
        /// The message: any JSON.
        data: String,
    },
    /// Subscribe over WebSocket and print every frame, one JSON per line.
    Subscribe {
        #[command(flatten)]
        server: ServerArgs,
        /// Connection token (omit when the server allows anonymous clients).
        #[arg(long, env = "SWITCHBOARD_TOKEN")]
        token: Option<String>,
        #[arg(required = true)]
        channels: Vec<String>,
    },
}

#[derive(Args)]
struct ConfigArgs {
    /// TOML config file.
    #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ServerArgs {
    /// Base URL of the server.
    #[arg(long, env = "SWITCHBOARD_URL", default_value = "http://127.0.0.1:7700")]
    server: String,
    /// Server API key (printed at startup in development mode).
    #[arg(long, env = "SWITCHBOARD_API_KEY")]
    api_key: Option<String>,
}

/// Prints a line to stderr, ignoring a closed stderr (a server must not die of that).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config, listen } => serve(config, listen).await,
            Command::Token {
                config,
                secret,
                sub,
                subscribe,
                publish,
                rooms,
                info,
                ttl,
            } => {
                let claims = token_claims(sub, subscribe, publish, rooms, info, ttl)?;
                token(config, secret, claims)
            }
            Command::Publish {
                server,
                channel,
                data,
            } => publish_cmd(server, &channel, &data).await,
            Command::Subscribe {
                server,
                token,
                channels,
            } => subscribe_cmd(server, token, channels).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say!("switchboard: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ConfigArgs, listen: Option<String>) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let resolved = Config::load(args.config.as_deref())
        .map_err(|e| e.to_string())?
        .with_listen(listen)
        .resolve()
        .map_err(|e| e.to_string())?;
    let server = Server::bind(&resolved).await?;
    announce(&resolved, server.local_addr(), server.is_tls());
    server
        .run(shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    say!("switchboard: stopped");
    Ok(())
}

fn announce(resolved: &Resolved, addr: std::net::SocketAddr, tls: bool) {
    let (http, ws) = if tls {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    let base = format!("{http}://{addr}");
    say!(
        "switchboard {} listening on {base}",
        env!("CARGO_PKG_VERSION")
    );
    say!("  WebSocket  {ws}://{addr}/ws    API  {base}/api    metrics  {base}/metrics");
    if !resolved.config.pusher.apps.is_empty() {
        say!("  Pusher     {ws}://{addr}/app/<key>    API  {base}/apps/<app id>");
    }
    if resolved.dev_mode {
        let auth = &resolved.config.auth;
        let key = auth.api_key.as_deref().unwrap_or_default();
        let secret = auth.token_secret.as_deref().unwrap_or_default();
        say!();
        say!("  DEVELOPMENT MODE: no config given. Anonymous clients may subscribe, publish");
        say!("  and read anything, from pages on any origin. Keys below are generated for");
        say!("  this run only:");
        say!("    API key       {key}");
        say!("    token secret  {secret}");
        if let Some(app) = resolved.config.pusher.apps.first() {
            say!(
                "    Pusher app    id {}  key {}  secret {}  (ws {ws}://{addr}/app/{})",
                app.id,
                app.key,
                app.secret,
                app.key
            );
        }
        say!("  Try:");
        say!("    switchboard subscribe --server {base} chat:lobby");
        say!(
            "    switchboard publish --server {base} --api-key {key} chat:lobby '{{\"text\":\"hi\"}}'"
        );
        say!("  Configure [auth] (see README) before exposing this server.");
        say!();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    say!("switchboard: shutting down, telling clients to reconnect");
}

fn token_claims(
    sub: String,
    subscribe: Vec<String>,
    publish: Vec<String>,
    rooms: Vec<String>,
    info: Option<String>,
    ttl: u64,
) -> Result<TokenClaims, String> {
    let info = info
        .map(|text| {
            serde_json::value::RawValue::from_string(text)
                .map_err(|e| format!("--info is not valid JSON: {e}"))
        })
        .transpose()?;
    let some = |v: Vec<String>| (!v.is_empty()).then_some(v);
    Ok(TokenClaims {
        sub: Some(sub),
        exp: (ttl > 0).then(|| switchboard_core::unix_now() + ttl),
        info,
        subscribe: some(subscribe),
        publish: some(publish),
        rooms: some(rooms),
        ..TokenClaims::default()
    })
}

fn token(args: ConfigArgs, secret: Option<String>, mut claims: TokenClaims) -> Result<(), String> {
    let auth = Config::load(args.config.as_deref())
        .map_err(|e| e.to_string())?
        .auth;
    // A server that checks `aud` and `iss` gets tokens that carry them.
    claims.aud = auth.audience.map(Audience::One);
    claims.iss = auth.issuer;
    let secret = match secret {
        Some(s) => s,
        None => auth.token_secret.ok_or(
            "no token secret: pass --secret, or set [auth] token_secret in the config \
             (a development-mode server prints its secret at startup)",
        )?,
    };
    println!("{}", mint_hs256(&secret, &claims));
    Ok(())
}

async fn publish_cmd(server: ServerArgs, channel: &str, data: &str) -> Result<(), String> {
    let data: Value =
        serde_json::from_str(data).map_err(|e| format!("data is not valid JSON: {e}"))?;
    let api = ApiClient::new(&server.server, server.api_key.as_deref());
    let answer = api
        .publish(channel, &data)
        .await
        .map_err(|e| e.to_string())?;
    println!("{answer}");
    Ok(())
}

async fn subscribe_cmd(
    server: ServerArgs,
    token: Option<String>,
    channels: Vec<String>,
) -> Result<(), String> {
    let (mut client, connected) = WsClient::connect(&server.server, token.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    println!("{connected}");
    for channel in &channels {
        let reply = client.subscribe(channel).await.map_err(|e| e.to_string())?;
        println!("{reply}");
    }
    loop {
        match client.next_push(Duration::from_secs(3600)).await {
            Ok(frame) => println!("{frame}"),
            Err(switchboard_client::Error::Timeout(_)) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}
