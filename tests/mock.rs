//! How a user unit-tests their own code against a mocked bus (feature `mock`).
#![cfg(feature = "mock")]

use fleetwire::{mock::MockEventBus, Envelope, ErrorKind, EventBus, MessageId, StreamName};

/// The user's code under test: publishes an order and reports the id.
async fn place_order(bus: &dyn EventBus, item: &str) -> fleetwire::Result<String> {
    let stream = StreamName::new("orders")?;
    let id = bus
        .publish(&stream, &Envelope::new("order.placed").with_payload(item)?)
        .await?;
    Ok(format!("order {id}"))
}

#[tokio::test]
async fn user_code_publishes_once_to_the_orders_stream() {
    let mut bus = MockEventBus::new();
    bus.expect_publish()
        .withf(|stream, env| {
            stream.as_str() == "orders"
                && env.kind == "order.placed"
                && env.payload_as::<String>().ok().as_deref() == Some("book")
        })
        .times(1)
        .returning(|_, _| Ok(MessageId { ms: 7, seq: 0 }));
    assert_eq!(place_order(&bus, "book").await.unwrap(), "order 7-0");
}

#[tokio::test]
async fn user_code_surfaces_an_outage() {
    let mut bus = MockEventBus::new();
    bus.expect_publish()
        .returning(|_, _| Err(fleetwire::Error::new(ErrorKind::Unavailable, "down")));
    let err = place_order(&bus, "book").await.unwrap_err();
    assert!(err.is_temporary());
}
