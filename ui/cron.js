// Cron expressions in words, for the common forms ("every day at 02:30 Europe/Berlin").
// Anything else is shown as the expression itself: the server is the judge of what is valid.

const DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const DAY_NAMES = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
const MONTHS = [
  "January", "February", "March", "April", "May", "June",
  "July", "August", "September", "October", "November", "December",
];
const MONTH_NAMES = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];

const pad = (n) => String(n).padStart(2, "0");
const isNumber = (text) => /^\d{1,2}$/.test(text);

/** A day-of-week field value (0-7 or MON...) as a day index 0-6, or null. */
function dayIndex(text) {
  const upper = text.toUpperCase();
  if (DAY_NAMES.includes(upper)) return DAY_NAMES.indexOf(upper);
  if (/^[0-7]$/.test(text)) return Number(text) % 7;
  return null;
}

/** A month field value (1-12 or JAN...) as a month index 0-11, or null. */
function monthIndex(text) {
  const upper = text.toUpperCase();
  if (MONTH_NAMES.includes(upper)) return MONTH_NAMES.indexOf(upper);
  if (/^\d{1,2}$/.test(text) && Number(text) >= 1 && Number(text) <= 12) return Number(text) - 1;
  return null;
}

/** The day-of-week field in words ("every Monday", "every weekday"), or null. */
function daysText(field) {
  if (/^(1-5|MON-FRI)$/i.test(field)) return "every weekday (Monday to Friday)";
  if (/^(0,6|6,0|SAT,SUN|SUN,SAT|6-7|SAT-SUN)$/i.test(field)) return "every Saturday and Sunday";
  const days = field.split(",").map(dayIndex);
  if (days.some((d) => d === null)) return null;
  const names = days.map((d) => DAYS[d]);
  if (names.length === 1) return `every ${names[0]}`;
  return `every ${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
}

function ordinalDay(n) {
  return `day ${n}`;
}

/**
 * The expression `cron` (5 fields, or 6 with seconds first) in `timezone`, in words,
 * or null when it is not one of the common forms.
 */
export function explainCron(cron, timezone) {
  const fields = String(cron || "").trim().split(/\s+/);
  if (fields.length !== 5 && fields.length !== 6) return null;
  const [second, minute, hour, day, month, weekday] = fields.length === 6 ? fields : ["0", ...fields];
  const zone = timezone ? ` ${timezone}` : "";
  const rest = [day, month, weekday];
  const everyDay = rest.every((f) => f === "*");

  // Sub-minute and sub-hour rhythms.
  if (fields.length === 6 && everyDay && minute === "*" && hour === "*") {
    if (second === "*") return "every second";
    const step = /^\*\/(\d+)$/.exec(second);
    if (step) return `every ${step[1]} seconds`;
    if (isNumber(second)) return `every minute at second ${Number(second)}`;
    return null;
  }
  if (second !== "0") {
    // A fixed time with seconds: "every day at 02:30:15".
    if (!(isNumber(second) && isNumber(minute) && isNumber(hour))) return null;
  }
  if (everyDay && hour === "*") {
    if (minute === "*") return "every minute";
    const step = /^\*\/(\d+)$/.exec(minute);
    if (step) return `every ${step[1]} minutes`;
    if (isNumber(minute)) return `every hour at minute ${Number(minute)}`;
    return null;
  }
  const hourStep = /^\*\/(\d+)$/.exec(hour);
  if (everyDay && hourStep && isNumber(minute)) {
    const at = Number(minute) ? ` at minute ${Number(minute)}` : "";
    return `every ${hourStep[1]} hours${at}${zone}`;
  }
  if (!(isNumber(minute) && isNumber(hour))) return null;
  const time = `${pad(hour)}:${pad(minute)}${second !== "0" ? ":" + pad(second) : ""}`;
  if (everyDay) return `every day at ${time}${zone}`;
  if (day === "*" && month === "*") {
    const days = daysText(weekday);
    return days ? `${days} at ${time}${zone}` : null;
  }
  if (weekday === "*" && isNumber(day)) {
    if (month === "*") return `on ${ordinalDay(Number(day))} of every month at ${time}${zone}`;
    const m = monthIndex(month);
    if (m !== null) return `every year on ${Number(day)} ${MONTHS[m]} at ${time}${zone}`;
  }
  return null;
}

/** The expression in words, or the expression itself (with its zone) when it is not a common form. */
export function describeCron(cron, timezone) {
  return explainCron(cron, timezone) || `cron “${cron}”${timezone ? " " + timezone : ""}`;
}
