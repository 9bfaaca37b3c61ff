//! Budget periods: UTC calendar days and months, as stable ids and reset times.

use time::{Date, Month, OffsetDateTime};

use crate::keys::BudgetPeriod;

/// The period containing `now_ms`: its id (e.g. `d2026-11-27`, `m2026-11`) and when it ends.
pub fn current(period: BudgetPeriod, now_ms: u64) -> (String, u64) {
    let now = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let date = now.date();
    match period {
        BudgetPeriod::Day => {
            let next = date.next_day().unwrap_or(date);
            (format!("d{date}"), start_ms(next))
        }
        BudgetPeriod::Month => {
            let (year, month) = (date.year(), date.month());
            let (next_year, next_month) = match month {
                Month::December => (year + 1, Month::January),
                m => (year, m.next()),
            };
            let next = Date::from_calendar_date(next_year, next_month, 1).unwrap_or(date);
            (format!("m{year:04}-{:02}", month as u8), start_ms(next))
        }
    }
}

fn start_ms(date: Date) -> u64 {
    let ts = date.midnight().assume_utc().unix_timestamp();
    u64::try_from(ts).unwrap_or(0).saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_months_in_utc() {
        // 2026-11-27T23:59:59.999Z
        let t = 1_795_823_999_999;
        assert_eq!(
            current(BudgetPeriod::Day, t),
            ("d2026-11-27".into(), 1_795_824_000_000)
        );
        assert_eq!(current(BudgetPeriod::Day, t + 1).0, "d2026-11-28");
        let (id, ends) = current(BudgetPeriod::Month, t);
        assert_eq!(id, "m2026-11");
        assert_eq!(ends, 1_796_083_200_000); // 2026-12-01T00:00:00Z
        // December rolls into January of the next year.
        let dec = 1_798_675_200_000; // 2026-12-31T00:00:00Z
        assert_eq!(
            current(BudgetPeriod::Month, dec),
            ("m2026-12".into(), 1_798_761_600_000)
        );
    }
}
