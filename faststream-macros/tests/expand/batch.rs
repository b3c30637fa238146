#[subscriber("readings", batch = true, max_records = 100, batch_timeout_ms = 50, dlq = "readings-dlq")]
#[publisher("averages")]
async fn average(readings: Vec<Reading>, db: State<Db>) -> Result<Vec<Average>, DbError> {
    db.insert(&readings).await?;
    Ok(summarize(&readings))
}
