#[subscriber("payments", group_id = "billing", retry = 5, dlq = "payments.dlq", ack = "manual", timeout_ms = 2000)]
async fn pay(payment: Payment, acker: Acker) -> Result<(), Failure> {
    settle(payment, acker).await
}
