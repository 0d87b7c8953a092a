//! The backends chosen by Cargo feature, in one place: the default store at the `db` path and the
//! network stack (platform API and transport) for an instance.
//!
//! Stores: with `sqlite` (default), SQLite; with `sled` and not `sqlite`, sled; with both, SQLite
//! (the default feature; tested by `tests/backends.rs`), so that adding `sled` to a build that has
//! the defaults changes nothing on the devices; with neither, an in-memory store and a warning at
//! start (nothing survives a restart). An injected store (`DeviceClientBuilder::store`) wins over
//! all of them. Network: with `mqtt`, MQTT over TLS (or over WebSocket with `ws` and
//! `Protocol::MqttOverWebSocket`) and the HTTPS platform API; without it, both must be injected.

use std::path::Path;
use std::sync::Arc;

use spotflow_core::{Error, PlatformApi, Result, Store, Transport};

use crate::{ClientOptions, Instance, NetworkOptions};

/// The platform API and the transport: the injected ones, else (feature `mqtt`) the built-in
/// ones for `instance`; without `mqtt` both must be injected.
pub(crate) fn network_stack(
    api: Option<Arc<dyn PlatformApi>>,
    transport: Option<Arc<dyn Transport>>,
    instance: &Instance,
    network: &NetworkOptions,
    options: &ClientOptions,
) -> Result<(Arc<dyn PlatformApi>, Arc<dyn Transport>)> {
    if let (Some(a), Some(t)) = (&api, &transport) {
        return Ok((a.clone(), t.clone()));
    }
    #[cfg(not(feature = "mqtt"))]
    {
        let _ = (network, options);
        let api = api.ok_or_else(|| no_network("platform_api", instance))?;
        let transport = transport.ok_or_else(|| no_network("transport", instance))?;
        Ok((api, transport))
    }
    #[cfg(feature = "mqtt")]
    {
        use spotflow_transport_mqtt::{HttpPlatformApi, MqttTransport, MqttTransportOptions, TlsOptions};
        let tls = TlsOptions { platform_roots: network.platform_roots, extra_ca_pem: network.extra_ca_pem.clone() }
            .client_config()?;
        let api = match api {
            Some(a) => a,
            None => Arc::new(HttpPlatformApi::new(
                &instance.base_url(),
                &instance.id(),
                tls.clone(),
                options.request_timeout,
            )?),
        };
        let transport = match transport {
            Some(t) => t,
            None if network.protocol == crate::Protocol::MqttOverWebSocket => {
                websocket_transport(instance, network, options, tls)?
            }
            None => {
                let mut o = if network.mqtt_plain_tcp {
                    tracing::warn!("MQTT over plain TCP: traffic is neither encrypted nor authenticated");
                    MqttTransportOptions::plain_tcp(network.mqtt_port)
                } else {
                    let mut o = MqttTransportOptions::tls(tls);
                    o.port = network.mqtt_port;
                    o
                };
                o.max_in_flight = u16::try_from(options.max_in_flight).unwrap_or(u16::MAX);
                configure_session(&mut o.session, instance, network, options)?;
                Arc::new(MqttTransport::new(o)?)
            }
        };
        Ok((api, transport))
    }
}

/// What the MQTT and WebSocket transports take from the options alike.
#[cfg(feature = "mqtt")]
fn configure_session(
    session: &mut spotflow_transport_mqtt::SessionOptions,
    instance: &Instance,
    network: &NetworkOptions,
    options: &ClientOptions,
) -> Result<()> {
    session.upload_base_url = upload_base_url(instance, network)?;
    session.connect_timeout = options.request_timeout;
    session.stall_timeout = options.stall_timeout;
    Ok(())
}

/// Where large messages are uploaded: the option (`https://`, or `http://` to a loopback host:
/// the upload carries the SAS), else, for a local instance (loopback host: the emulator serves
/// the upload API beside provisioning), the instance itself, else `https://{hub}` (`None`).
#[cfg(feature = "mqtt")]
fn upload_base_url(instance: &Instance, network: &NetworkOptions) -> Result<Option<String>> {
    match &network.upload_base_url {
        Some(url) => Instance::parse(url).map(|u| Some(u.base_url())).map_err(|e| Error::invalid("upload base URL", e)),
        None => Ok(spotflow_core::is_loopback_host(&instance.host).then(|| instance.base_url())),
    }
}

#[cfg(feature = "ws")]
fn websocket_transport(
    instance: &Instance,
    network: &NetworkOptions,
    options: &ClientOptions,
    tls: Arc<spotflow_transport_mqtt_rustls::ClientConfig>,
) -> Result<Arc<dyn Transport>> {
    use spotflow_transport_ws::{Proxy, ProxyMode, WsTransport, WsTransportOptions};
    let mut o = if network.mqtt_plain_tcp {
        tracing::warn!("MQTT over plain ws://: traffic is neither encrypted nor authenticated");
        WsTransportOptions::plain(network.websocket_port)
    } else {
        let mut o = WsTransportOptions::tls(tls);
        o.port = network.websocket_port;
        o
    };
    if let Some(p) = &network.proxy {
        o.proxy = ProxyMode::Explicit(Proxy::parse(p)?);
    }
    configure_session(&mut o.session, instance, network, options)?;
    Ok(Arc::new(WsTransport::new(o)))
}

#[cfg(all(feature = "mqtt", not(feature = "ws")))]
fn websocket_transport(
    _instance: &Instance,
    _network: &NetworkOptions,
    _options: &ClientOptions,
    _tls: Arc<spotflow_transport_mqtt_rustls::ClientConfig>,
) -> Result<Arc<dyn Transport>> {
    Err(Error::invalid("protocol", "MQTT over WebSocket needs the `ws` feature of spotflow-device"))
}

#[cfg(feature = "mqtt")]
use spotflow_transport_mqtt::rustls as spotflow_transport_mqtt_rustls;

#[cfg(not(feature = "mqtt"))]
fn no_network(what: &str, instance: &Instance) -> Error {
    Error::invalid(
        "configuration",
        format!(
            "no {what} configured for instance {}: this build has no network transport yet; \
             enable the `mqtt` feature or inject one with DeviceClientBuilder::{what}",
            instance.authority
        ),
    )
}

/// The store at `db` when none is injected (see the module's documentation for the choice).
pub(crate) async fn default_store(db: &Path, durability: crate::Durability) -> Result<Arc<dyn Store>> {
    #[cfg(feature = "sqlite")]
    let store: Arc<dyn Store> = Arc::new(spotflow_store_sqlite::SqliteStore::open_async(db, durability).await?);
    #[cfg(all(feature = "sled", not(feature = "sqlite")))]
    let store: Arc<dyn Store> = Arc::new(spotflow_store_sled::SledStore::open_async(db, durability).await?);
    #[cfg(not(any(feature = "sqlite", feature = "sled")))]
    let store: Arc<dyn Store> = {
        let _ = durability;
        tracing::warn!(
            db = %db.display(),
            "no durable store is compiled in (feature `sqlite`): using an in-memory store; queued messages do not \
             survive a restart"
        );
        Arc::new(spotflow_core::MemoryStore::new())
    };
    Ok(store)
}
