// Dates and times in a given IANA time zone, with Intl only (no library).

const partFormatters = new Map();

function partsFormatter(timeZone) {
  let formatter = partFormatters.get(timeZone);
  if (!formatter) {
    formatter = new Intl.DateTimeFormat("en-US", {
      timeZone,
      hourCycle: "h23",
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
      weekday: "short",
    });
    partFormatters.set(timeZone, formatter);
  }
  return formatter;
}

const WEEKDAYS = { Mon: 0, Tue: 1, Wed: 2, Thu: 3, Fri: 4, Sat: 5, Sun: 6 };

/** The wall-clock reading of an instant in a time zone; weekday 0 = Monday. */
export function zonedParts(date, timeZone) {
  const parts = {};
  for (const part of partsFormatter(timeZone).formatToParts(date)) parts[part.type] = part.value;
  return {
    year: Number(parts.year),
    month: Number(parts.month),
    day: Number(parts.day),
    hour: Number(parts.hour) % 24,
    minute: Number(parts.minute),
    second: Number(parts.second),
    weekday: WEEKDAYS[parts.weekday],
  };
}

/** How far the zone's wall clock is ahead of UTC at this instant, in ms. */
function offsetMs(date, timeZone) {
  const p = zonedParts(date, timeZone);
  const asUtc = Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second);
  return asUtc - Math.floor(date.getTime() / 1000) * 1000;
}

/** The instant a wall-clock time happens in a time zone (the later reading in a DST gap). */
export function zonedTime({ year, month, day, hour = 0, minute = 0 }, timeZone) {
  const guess = Date.UTC(year, month - 1, day, hour, minute);
  const first = guess - offsetMs(new Date(guess), timeZone);
  const second = guess - offsetMs(new Date(first), timeZone);
  return new Date(second);
}

/** A calendar date plus some days (pure calendar arithmetic, no time zone involved). */
export function addDays({ year, month, day }, days) {
  const date = new Date(Date.UTC(year, month - 1, day + days));
  return { year: date.getUTCFullYear(), month: date.getUTCMonth() + 1, day: date.getUTCDate() };
}

export function dateKey({ year, month, day }) {
  return `${year}-${String(month).padStart(2, "0")}-${String(day).padStart(2, "0")}`;
}

/** Monday of the week holding this instant, in the zone. */
export function weekStart(date, timeZone) {
  const p = zonedParts(date, timeZone);
  return addDays(p, -p.weekday);
}

const FORMATS = {
  time: { hour: "2-digit", minute: "2-digit" },
  day: { weekday: "long", day: "numeric", month: "long" },
  dateTime: { weekday: "long", day: "numeric", month: "long", year: "numeric", hour: "2-digit", minute: "2-digit" },
};
const formatters = new Map();

/** One Intl formatter per zone and format: building one costs more than formatting. */
function formatter(kind, timeZone) {
  const key = `${kind} ${timeZone}`;
  let found = formatters.get(key);
  if (!found) {
    found = new Intl.DateTimeFormat(undefined, { timeZone, ...FORMATS[kind] });
    formatters.set(key, found);
  }
  return found;
}

export function formatTime(value, timeZone) {
  return formatter("time", timeZone).format(new Date(value));
}

export function formatDay(value, timeZone) {
  return formatter("day", timeZone).format(new Date(value));
}

export function formatDateTime(value, timeZone) {
  return formatter("dateTime", timeZone).format(new Date(value));
}

/** The zone's short name at that instant ("EST", "GMT+1"). */
export function zoneName(value, timeZone) {
  const part = new Intl.DateTimeFormat(undefined, { timeZone, timeZoneName: "short" })
    .formatToParts(new Date(value))
    .find((p) => p.type === "timeZoneName");
  return part ? part.value : timeZone;
}

/** "3 min", "1 h 5 min", "less than a minute". */
export function formatDuration(seconds) {
  const minutes = Math.floor(Math.max(0, seconds) / 60);
  if (minutes < 1) return "less than a minute";
  if (minutes < 60) return `${minutes} min`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** RFC 3339 in UTC, as the API wants it. */
export function rfc3339(date) {
  return new Date(date).toISOString().replace(/\.\d{3}Z$/, "Z");
}
