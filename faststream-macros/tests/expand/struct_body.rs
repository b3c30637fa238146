#[subscriber("orders", group_id = "billing", auto_offset_reset = "earliest")]
async fn on_order(order: Order) -> Result<(), BillingError> {
    bill(order).await
}
